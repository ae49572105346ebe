#!/usr/bin/env bash
# Relay benchmark (bench/relay-bench.mjs): relay vs straight to Jupyter vs configurable-http-proxy
# vs two bare TCP pipes. Needs Docker and the runit-jupyter image; builds the packages first.
# BENCH_SECONDS sets the length of each measurement (default 0.5), BENCH_ROUNDS their number (30).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ensure-docker.sh >/dev/null
docker image inspect runit-jupyter:latest >/dev/null 2>&1 || ./scripts/build-image.sh
pnpm exec tsc -b packages/protocol packages/control-plane packages/agent
exec node bench/relay-bench.mjs

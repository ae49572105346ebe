#!/usr/bin/env bash
# Runs every test on a fresh clone: installs pnpm and dependencies, makes sure a Docker engine
# answers and the session image exists, installs Chromium, then typecheck, lint, build, the
# vitest suites (real Docker, real SQLite, real sockets, real browser) and test_security.sh
# against a freshly started control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ensure-tools.sh
./scripts/ensure-docker.sh
./scripts/build-image.sh
./scripts/ensure-chromium.sh
pnpm run ci
./scripts/security-ci.sh
echo "[test] all suites passed"

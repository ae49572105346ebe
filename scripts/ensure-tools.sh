#!/usr/bin/env bash
# Install what a fresh clone needs: pnpm (from npm) and the workspace's dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PNPM_VERSION=10.34.8
if ! command -v pnpm >/dev/null 2>&1 || [ "$(pnpm --version)" != "$PNPM_VERSION" ]; then
  echo "[setup] installing pnpm $PNPM_VERSION from npm..."
  npm install -g "pnpm@$PNPM_VERSION" >/dev/null
fi
echo "[setup] installing dependencies (pnpm install --frozen-lockfile)..."
pnpm install --frozen-lockfile

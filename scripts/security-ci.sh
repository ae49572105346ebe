#!/usr/bin/env bash
# Runs ./test_security.sh against a freshly started control plane: the built CLI on a free
# loopback port, a temporary SQLite database and operator token, and a provider key made with
# `keys create --name ci`. Stops the server and exits with the suite's status. A second pass runs
# the suite against a control plane with per-session origins (RUNIT_SESSION_ORIGIN).
# Needs the control plane built (pnpm run build); scripts/test.sh calls this after `pnpm run ci`.
set -euo pipefail
cd "$(dirname "$0")/.."

CLI=packages/control-plane/bin/runit-control-plane.js
if [ ! -f packages/control-plane/dist/cli.js ]; then
  echo "[security-ci] packages/control-plane is not built (run: pnpm exec tsc -b packages/control-plane)" >&2
  exit 1
fi

WORK="$(mktemp -d)"
SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
trap 'stop_server; rm -rf "$WORK"' EXIT

export RUNIT_DB="$WORK/runit.db"
export RUNIT_ADMIN_TOKEN="ci-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
PORT="$(node -e 'const s=require("node:net").createServer().listen(0,"127.0.0.1",()=>{process.stdout.write(String(s.address().port));s.close()})')"

KEYS=()
# new_key <name>: a provider key in $RUNIT_DB, in $KEY (and KEYS, for the log check below).
new_key() {
  KEY="$(node "$CLI" keys create --name "$1" | tail -n 1 | tr -d '\r')"
  if [ -z "$KEY" ]; then echo "[security-ci] keys create printed no key" >&2; exit 1; fi
  KEYS+=("$KEY")
}

# start_server <log> [VAR=value...]: the CLI on $PORT with the given extra environment, logging
# to $WORK/<log> (that file is then $LOG).
start_server() {
  LOG="$WORK/$1"; shift
  env "$@" PORT="$PORT" RUNIT_HOST=127.0.0.1 node "$CLI" serve >"$LOG" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    grep -q "RUNIT server listening on port" "$LOG" && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  if ! grep -q "RUNIT server listening on port" "$LOG"; then
    echo "[security-ci] the control plane did not start:" >&2
    cat "$LOG" >&2
    exit 1
  fi
}

new_key ci
start_server server.log
echo "[security-ci] control plane on http://127.0.0.1:$PORT (database $RUNIT_DB)"
status=0
RUNIT_PROVIDER_KEY="$KEY" ./test_security.sh "http://127.0.0.1:$PORT" || status=$?
stop_server

# Second pass: the same suite against per-session origins (every session on its own host,
# http://<id>.localhost:<port>), with a fresh database so that no rate-limit budget carries over.
if [ "$status" -eq 0 ]; then
  export RUNIT_DB="$WORK/runit-origins.db"
  new_key ci-origins
  ORIGIN="http://{id}.localhost:$PORT"
  start_server server-origins.log RUNIT_SESSION_ORIGIN="$ORIGIN"
  echo "[security-ci] control plane with RUNIT_SESSION_ORIGIN=$ORIGIN"
  RUNIT_PROVIDER_KEY="$KEY" RUNIT_SESSION_ORIGIN="$ORIGIN" ./test_security.sh "http://127.0.0.1:$PORT" || status=$?
  stop_server
fi

# The keys were shown once, by `keys create`; the server must never have logged one whole.
for key in "${KEYS[@]}"; do
  if leaked="$(grep -lF -- "$key" "$WORK"/server*.log)"; then
    echo "[security-ci] ❌ the server log ($(basename "$leaked")) contains a whole provider key" >&2
    status=1
  fi
done
if [ "$status" -ne 0 ]; then
  echo "[security-ci] test_security.sh failed ($status); server log ($(basename "$LOG")):" >&2
  tail -n 60 "$LOG" >&2
fi
exit "$status"

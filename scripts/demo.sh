#!/usr/bin/env bash
# The whole RUNIT system on this machine, from a fresh clone: installs pnpm and the dependencies,
# makes sure a Docker engine answers, builds the session image and the code, starts the control
# plane (embedded SQLite under ./data/), creates a provider key, starts one agent with a real
# container and prints the renter URL. Ctrl-C stops everything and leaves no container behind.
#
# Environment: PORT (default 10000, or a free port when it is taken), RUNIT_DB (default
# ./data/demo.db), DEMO_WAIT_SECONDS (how long to wait for the first session, default 300).
# Session workspaces go to ./data/workspace, logs to ./data/logs (data/ is gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DATA_DIR="$ROOT/data"
LOG_DIR="$DATA_DIR/logs"
export RUNIT_DB="${RUNIT_DB:-$DATA_DIR/demo.db}"
# Loopback only, as printed below: the demo is not for the LAN.
export RUNIT_HOST="${RUNIT_HOST:-127.0.0.1}"
# The demo's agent name: Ctrl-C removes this agent's containers only, not another agent's.
AGENT_NAME=demo
WAIT_SECONDS="${DEMO_WAIT_SECONDS:-300}"
CP_PID=""
AGENT_PID=""
TAIL_PID=""

say() { printf '[demo] %s\n' "$*"; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_port() {
  local wanted="${PORT:-10000}"
  if port_free "$wanted"; then echo "$wanted"; return; fi
  node -e 'const s=require("node:net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

# Stops one process we started: SIGTERM, up to $2 seconds, then SIGKILL.
stop_pid() {
  local pid="$1" grace="$2" i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  say "process $pid did not stop within ${grace}s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local status=$?
  # Whatever fails from here on (even a closed terminal), every stop below still runs.
  set +e
  trap - INT TERM HUP EXIT
  echo
  say "stopping..."
  # The agent first: on SIGTERM it removes its containers and deregisters its session.
  stop_pid "$AGENT_PID" 60
  stop_pid "$CP_PID" 20
  sleep 0.5 # let the log follower print their last lines
  stop_pid "$TAIL_PID" 2
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    local left
    left=$(docker ps -aq --filter label=runit.managed=true --filter "label=runit.agent=$AGENT_NAME")
    if [ -n "$left" ]; then
      say "removing containers the agent left behind: $(echo "$left" | tr '\n' ' ')"
      # shellcheck disable=SC2086
      docker rm -f $left >/dev/null || true
    fi
    say "RUNIT containers of this demo left: $(docker ps -aq --filter label=runit.managed=true --filter "label=runit.agent=$AGENT_NAME" | wc -l)"
  fi
  say "stopped. Logs are in $LOG_DIR/"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
# A closed output pipe (e.g. `| tee` ended by the same Ctrl-C) must not kill us before cleanup.
trap '' PIPE

say "1/6 installing tools and dependencies"
./scripts/ensure-tools.sh
say "2/6 checking the Docker engine"
./scripts/ensure-docker.sh
say "3/6 building the session image (first run: a few minutes)"
if [ -x ./scripts/build-image.sh ]; then
  ./scripts/build-image.sh
else
  say "scripts/build-image.sh not found: the agent checks and builds the image itself"
fi
say "4/6 building the code"
pnpm run build

mkdir -p "$DATA_DIR" "$LOG_DIR"
PORT=$(pick_port)
export PORT
BASE="http://127.0.0.1:$PORT"
CP=(node packages/control-plane/bin/runit-control-plane.js)
AGENT=(node packages/agent/bin/runit-agent.js)
# Children run in their own session so Ctrl-C reaches this script alone, which then stops the
# agent first (it deregisters and removes its container) and the control plane after it.
DETACH=()
if command -v setsid >/dev/null 2>&1; then DETACH=(setsid); fi

say "5/6 starting the control plane on port $PORT (database $RUNIT_DB)"
KEY=$("${CP[@]}" keys create --name demo | tail -n 1)
if [ -z "$KEY" ]; then say "could not create a provider key"; exit 1; fi
"${DETACH[@]}" "${CP[@]}" >"$LOG_DIR/control-plane.log" 2>&1 &
CP_PID=$!
for ((i = 0; i < 300; i++)); do
  if curl -fsS "$BASE/healthz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$CP_PID" 2>/dev/null; then
    say "the control plane exited; its log:"; tail -n 30 "$LOG_DIR/control-plane.log"; exit 1
  fi
  sleep 0.2
done
curl -fsS "$BASE/healthz" >/dev/null || { say "the control plane did not answer within 60 s"; exit 1; }
say "control plane answers at $BASE"

say "6/6 starting one agent (provider key created as 'demo')"
# The key goes in the environment, not on the command line where `ps` would show it.
RUNIT_PROVIDER_KEY="$KEY" "${DETACH[@]}" "${AGENT[@]}" start --server "$BASE" --name "$AGENT_NAME" \
  --workspace-root "$DATA_DIR/workspace" >"$LOG_DIR/agent.log" 2>&1 &
AGENT_PID=$!
say "waiting for the agent's first session (up to ${WAIT_SECONDS}s)..."
deadline=$((SECONDS + WAIT_SECONDS))
# This agent's own registration, then the listing (a session of an earlier run may still be listed).
until grep -q "session registered" "$LOG_DIR/agent.log" 2>/dev/null &&
  curl -fsS "$BASE/renter/sessions" 2>/dev/null | grep -q '"sessionId"'; do
  if ! kill -0 "$AGENT_PID" 2>/dev/null; then
    say "the agent exited; its log:"; tail -n 30 "$LOG_DIR/agent.log"; exit 1
  fi
  if ((SECONDS >= deadline)); then
    say "no session listed after ${WAIT_SECONDS}s; the agent's log:"; tail -n 30 "$LOG_DIR/agent.log"; exit 1
  fi
  sleep 1
done

cat <<EOF

  RUNIT is running.

  Renter page:    $BASE/renter
  Control plane:  $BASE   (database: $RUNIT_DB)
  Logs:           $LOG_DIR/control-plane.log, $LOG_DIR/agent.log (followed below)

  Open the renter page, press Connect: Jupyter opens in a new tab. Release ends the
  session and the agent offers a fresh one. Press Ctrl-C to stop everything.

EOF
tail -n 3 -f "$LOG_DIR/control-plane.log" "$LOG_DIR/agent.log" &
TAIL_PID=$!
# Wait until Ctrl-C, or until the control plane or the agent dies.
while kill -0 "$CP_PID" 2>/dev/null && kill -0 "$AGENT_PID" 2>/dev/null; do
  sleep 1
done
say "the control plane or the agent exited on its own"
exit 1

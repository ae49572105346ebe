#!/usr/bin/env bash
# Make sure a Docker engine answers. On a fresh Debian machine (as root) none runs: install
# Debian's docker.io when dockerd is missing and start dockerd in the background.
# Fails loudly when no engine can be had: Docker tests are never skipped silently.
set -euo pipefail
# Under a plain `su`, PATH lacks the sbin directories where dockerd and iptables live.
export PATH="$PATH:/usr/sbin:/sbin"

engine_answers() { docker info >/dev/null 2>&1; }

# The agent's host firewall needs iptables; the relay's tunnel-cut test needs ss (iproute2).
if [ "$(id -u)" = "0" ] && { ! command -v iptables >/dev/null 2>&1 || ! command -v ss >/dev/null 2>&1; }; then
  echo "[docker] installing iptables and iproute2..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq iptables iproute2 >/dev/null
fi

if engine_answers; then
  echo "[docker] engine answers"
  exit 0
fi
if [ -n "${DOCKER_HOST:-}" ]; then
  echo "[docker] DOCKER_HOST=$DOCKER_HOST does not answer; not starting a local engine" >&2
  exit 1
fi
if [ "$(id -u)" != "0" ]; then
  echo "[docker] no engine answers and this script is not root: start Docker yourself" >&2
  exit 1
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "[docker] installing Debian's docker.io..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io iptables >/dev/null
fi
log=/var/log/runit-dockerd.log
echo "[docker] starting dockerd (log: $log)..."
# In a session of its own: dockerd handles SIGINT itself, so in the caller's process group a
# Ctrl-C of ./scripts/demo.sh would stop the engine while the agent is still removing containers.
DETACH=()
if command -v setsid >/dev/null 2>&1; then DETACH=(setsid); fi
"${DETACH[@]}" nohup dockerd </dev/null >"$log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 1 60); do
  if engine_answers; then echo "[docker] engine answers"; exit 0; fi
  if ! kill -0 "$dockerd_pid" 2>/dev/null; then
    echo "[docker] dockerd exited; last log lines:" >&2
    tail -20 "$log" >&2 || true
    exit 1
  fi
  sleep 1
done
echo "[docker] dockerd did not answer within 60 s; last log lines:" >&2
tail -20 "$log" >&2 || true
exit 1

#!/usr/bin/env bash
# Builds the session image `runit-jupyter` when it is missing or its docker/runit-jupyter/ sources
# changed (the image carries a content hash label). Works with no container registry: when the
# base image is absent and RUNIT_BASE_IMAGE is unset, a Debian bookworm root filesystem is built
# from Debian packages with mmdebstrap (about a minute) and imported as runit-base:bookworm.
#   RUNIT_BASE_IMAGE=debian:bookworm-slim ./scripts/build-image.sh   # use a registry base instead
#   RUNIT_IMAGE=runit-jupyter:dev ./scripts/build-image.sh            # another tag
#   RUNIT_BASE_IMAGE=runit-base:<tag>: built with mmdebstrap when absent, like the default
#   ./scripts/build-image.sh --force                                  # rebuild regardless
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${RUNIT_IMAGE:-runit-jupyter:latest}"
DEFAULT_BASE="runit-base:bookworm"
BASE="${RUNIT_BASE_IMAGE:-$DEFAULT_BASE}"
CONTEXT=docker/runit-jupyter
CACHE_DIR="${RUNIT_CACHE_DIR:-/var/cache/runit}"
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

log() { echo "[image] $*"; }
die() { echo "[image] error: $*" >&2; exit 1; }

docker info >/dev/null 2>&1 || die "no Docker engine answers (run ./scripts/ensure-docker.sh)"

# The hash covers every file of the context and the base name: a change to either rebuilds.
hash=$( { (cd "$CONTEXT" && find . -type f -print0 | sort -z | xargs -0 sha256sum); echo "base=$BASE"; } | sha256sum | cut -c1-16)
current=$(docker image inspect --format '{{ index .Config.Labels "runit.image-hash" }}' "$IMAGE" 2>/dev/null || true)
if [ "$FORCE" = 0 ] && [ "$current" = "$hash" ]; then
  log "$IMAGE is up to date (hash $hash)"
  exit 0
fi
if [ -z "$current" ]; then log "$IMAGE is missing: building it"; else log "$IMAGE is out of date ($current → $hash): rebuilding"; fi

# Builds a base from Debian packages and imports it as $1 (a runit-base:* tag).
build_base_with_mmdebstrap() {
  local tag="$1"
  local tar="$CACHE_DIR/runit-base-bookworm.tar"
  if ! command -v mmdebstrap >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "mmdebstrap is missing and this script is not root: apt-get install mmdebstrap, or set RUNIT_BASE_IMAGE"
    log "installing mmdebstrap with apt-get..."
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
  fi
  mkdir -p "$CACHE_DIR"
  if [ ! -s "$tar" ]; then
    log "building a Debian bookworm root filesystem with mmdebstrap (about a minute)..."
    local tmp="$tar.partial"
    rm -f "$tmp"
    mmdebstrap --variant=apt --format=tar --include=python3-notebook,tini bookworm "$tmp"
    mv "$tmp" "$tar"
  else
    log "using the cached root filesystem $tar"
  fi
  log "importing $tar as $tag..."
  docker import "$tar" "$tag" >/dev/null
}

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  if [[ "$BASE" == runit-base:* ]]; then
    build_base_with_mmdebstrap "$BASE"
  else
    log "pulling $BASE..."
    docker pull "$BASE" || die "cannot pull $BASE (no registry reachable?); unset RUNIT_BASE_IMAGE to build the base from Debian packages"
  fi
else
  log "base image $BASE exists"
fi

log "docker build $IMAGE from $CONTEXT (base $BASE)..."
start=$(date +%s)
# The build's own status counts (pipefail): with --force an older image carries the same hash
# label, so the label check below alone would pass a failed rebuild.
DOCKER_BUILDKIT=0 docker build --build-arg "BASE_IMAGE=$BASE" \
  --label "runit.image-hash=$hash" -t "$IMAGE" "$CONTEXT" 2>&1 | sed -u 's/^/[image] /' \
  || die "docker build of $IMAGE failed (see the lines above)"
docker image inspect --format '{{ index .Config.Labels "runit.image-hash" }}' "$IMAGE" 2>/dev/null | grep -qx "$hash" \
  || die "docker build of $IMAGE failed (see the lines above)"
log "$IMAGE built in $(( $(date +%s) - start )) s"

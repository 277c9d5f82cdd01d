#!/bin/sh
# Build the Torus container image (deploy/Dockerfile) with podman, offline.
#
#   deploy/build-image.sh [TAG]        default TAG: localhost/torus:<package.json version>
#
# Steps, each skipped when its result is already there:
#   1. compile the project (tsc) unless TORUS_SKIP_BUILD=1 (the caller just built);
#   2. collect the production dependencies (what `npm ci --omit=dev` installs)
#      from the installed node_modules into deploy/.build/node_modules, so no
#      npm registry is needed;
#   3. the base image: unless BASE is given, a Debian trixie root filesystem
#      made by mmdebstrap from the packages in deploy/image/base-packages.txt
#      (Node 20 and the attach/filesystem tools), cached as a tarball in
#      $TORUS_IMAGE_CACHE (default /var/cache/torus-image, or
#      ~/.cache/torus-image when not root) keyed by that list, and imported
#      into podman as localhost/torus-base:<key>;
#   4. podman build --pull=never --build-arg BASE=... -f deploy/Dockerfile .
#
# Environment:
#   BASE=IMAGE            build on this image instead (e.g. node:20-bookworm-slim
#                         when a registry is reachable: the Dockerfile then
#                         apt-get installs the tools it lacks)
#   TORUS_IMAGE_CACHE=DIR where base root filesystems are cached
#   TORUS_DEBIAN_MIRROR   default http://deb.debian.org/debian
#   CONTAINERS_CONF       default deploy/image/containers.conf (runc, cgroupfs,
#                         explicit ulimits: what podman needs on hosts with
#                         hybrid cgroups and low hard rlimits)
#
# Prints the phases with their durations, and the image's tag and size last.
set -eu

DEPLOY=$(cd "$(dirname "$0")" && pwd)
PROJECT=$(dirname "$DEPLOY")
cd "$PROJECT"

VERSION=$(node -p 'require("./package.json").version')
TAG=${1:-localhost/torus:$VERSION}
SUITE=trixie
MIRROR=${TORUS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ "$(id -u)" = 0 ]; then
  CACHE=${TORUS_IMAGE_CACHE:-/var/cache/torus-image}
else
  CACHE=${TORUS_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/torus-image}
fi
export CONTAINERS_CONF="${CONTAINERS_CONF:-$DEPLOY/image/containers.conf}"

now() { date +%s; }
phase() { echo "build-image: $*"; }
need() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "build-image: $1 is not installed (Debian/Ubuntu, as root: apt-get install $2)" >&2
    exit 3
  }
}
need podman "podman runc"
need node nodejs

START=$(now)

# 1. The compiled output the image runs.
if [ "${TORUS_SKIP_BUILD:-0}" != 1 ]; then
  phase "compiling (tsc)"
  node node_modules/typescript/bin/tsc -p tsconfig.json
fi
[ -f dist/src/cli/torusd.js ] || {
  echo "build-image: dist/src/cli/torusd.js is missing: run npm run build first" >&2
  exit 3
}

# 2. Production dependencies only: the packages `npm ls --omit=dev` lists,
# copied from the installed tree (which already holds them, built and
# verified by npm ci), so the image needs no registry and no dev tools.
phase "collecting production node_modules"
BUILD="$DEPLOY/.build"
rm -rf "$BUILD/node_modules"
mkdir -p "$BUILD/node_modules"
MODULES=$(cd node_modules && pwd -P)
npm ls --omit=dev --all --parseable 2>/dev/null |
  sed -n "s#^$PROJECT/node_modules/##p" |
  sort -u >"$BUILD/production-packages.txt"
[ -s "$BUILD/production-packages.txt" ] || {
  echo "build-image: npm ls --omit=dev listed no packages: is node_modules installed (npm ci)?" >&2
  exit 3
}
tar -C "$MODULES" -cf - -T "$BUILD/production-packages.txt" | tar -C "$BUILD/node_modules" -xf -

# 3. The base image.
if [ -z "${BASE:-}" ]; then
  PACKAGES=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$DEPLOY/image/base-packages.txt" | tr -s ' \n' ',' | sed 's/,$//')
  KEY=$(printf '%s\n%s\n%s\n' "$SUITE" "$MIRROR" "$PACKAGES" | sha256sum | cut -c1-16)
  BASE=localhost/torus-base:$SUITE-$KEY
  if podman image exists "$BASE"; then
    phase "base $BASE already in podman"
  else
    TARBALL=$CACHE/base-$SUITE-$KEY.tar
    if [ ! -s "$TARBALL" ]; then
      need mmdebstrap mmdebstrap
      mkdir -p "$CACHE"
      # mmdebstrap picks its output format from the name: keep the .tar suffix.
      PARTIAL=$CACHE/partial-$SUITE-$KEY.tar
      phase "making the $SUITE root filesystem with mmdebstrap ($PACKAGES); a few minutes, cached in $TARBALL"
      BASE_START=$(now)
      mmdebstrap --variant=minbase --include="$PACKAGES" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        "$SUITE" "$PARTIAL" "$MIRROR"
      mv "$PARTIAL" "$TARBALL"
      phase "root filesystem made in $(($(now) - BASE_START)) s"
    fi
    phase "importing $TARBALL as $BASE"
    podman import --change 'CMD ["/bin/sh"]' "$TARBALL" "$BASE" >/dev/null
  fi
fi

# 4. The image itself.
phase "podman build $TAG on $BASE"
BUILD_START=$(now)
podman build --pull=never --build-arg "BASE=$BASE" \
  --ignorefile "$DEPLOY/Dockerfile.dockerignore" \
  -f "$DEPLOY/Dockerfile" -t "$TAG" "$PROJECT"
phase "podman build took $(($(now) - BUILD_START)) s; $(($(now) - START)) s in all"
SIZE=$(podman image inspect --format '{{.Size}}' "$TAG")
phase "image $TAG, $((SIZE / 1048576)) MiB"

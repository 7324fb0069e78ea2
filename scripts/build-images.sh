#!/usr/bin/env bash
# Builds the local images (no registry needed): busybox and the pod infra image.
# Skips a build when an image with the same inputs already exists.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
busybox_image="${BUSYBOX_IMAGE:-kybernetes/busybox:latest}"
pause_image="${PAUSE_IMAGE:-kybernetes/pause:latest}"
busybox_bin=/bin/busybox

build() {  # build IMAGE DIR
  local image="$1" dir="$here/images/$2" ctx digest have
  ctx="$(mktemp -d)"
  trap 'rm -rf "$ctx"' RETURN
  cp -r "$dir"/. "$ctx"/
  cp "$busybox_bin" "$ctx/busybox"
  digest="$(cd "$ctx" && find . -type f | sort | xargs sha256sum | sha256sum | cut -c1-16)"
  have="$(docker image inspect -f '{{ index .Config.Labels "io.kybernetes.inputs" }}' "$image" 2>/dev/null || true)"
  if [ "$have" = "$digest" ]; then return 0; fi
  echo "building $image"
  # The legacy builder: Debian's docker.io here has no BuildKit.
  if ! out="$(DOCKER_BUILDKIT=0 docker build -q --label "io.kybernetes.inputs=$digest" -t "$image" "$ctx" 2>&1)"; then
    echo "building $image failed:" >&2
    echo "$out" >&2
    return 1
  fi
}
build "$busybox_image" busybox
build "$pause_image" pause

#!/usr/bin/env bash
# Builds the local images (no registry needed):
#   busybox, FROM scratch with Debian's dynamically linked busybox and the glibc it needs
#   (so that names resolve: wget http://backend/ works in a pod), and the pod infra
#   ("pause") image, FROM scratch with Debian's busybox-static;
#   the component image (every Kybernetes command) and an etcd image, on a Python base.
# Each build is skipped when an image with the same inputs exists.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
busybox_image="${BUSYBOX_IMAGE:-kybernetes/busybox:latest}"
pause_image="${PAUSE_IMAGE:-kybernetes/pause:latest}"
component_image="${COMPONENT_IMAGE:-kybernetes/kybernetes:latest}"
etcd_image="${ETCD_IMAGE:-kybernetes/etcd:latest}"
base_image="${BASE_IMAGE:-kybernetes/python-base:bookworm}"
python="${PYTHON:-$here/.venv/bin/python}"

inputs_digest() {  # a digest of the files in the build context
  (cd "$1" && find . -type f -not -path '*/__pycache__/*' | sort | xargs sha256sum) | sha256sum | cut -c1-16
}

current_digest() {
  docker image inspect -f '{{ index .Config.Labels "io.kybernetes.inputs" }}' "$1" 2>/dev/null || true
}

docker_build() {  # docker_build IMAGE CONTEXT DIGEST [build args...]
  local image="$1" ctx="$2" digest="$3" out
  shift 3
  echo "building $image"
  # The legacy builder: Debian's docker.io here has no BuildKit.
  if ! out="$(DOCKER_BUILDKIT=0 docker build -q --label "io.kybernetes.inputs=$digest" "$@" -t "$image" "$ctx" 2>&1)"; then
    echo "building $image failed:" >&2
    echo "$out" >&2
    return 1
  fi
}

dynamic_busybox() {  # prints the path of Debian's dynamically linked busybox, fetched once
  # Debian's busybox-static resolves names through a static glibc, which cannot
  # load the NSS modules: in a pod, wget of a name fails or crashes. The
  # dynamically linked busybox uses the glibc beside it in the image instead.
  # It conflicts with busybox-static as a package, so it is unpacked, not installed.
  local cache="${KYBERNETES_CACHE_DIR:-/var/cache/kybernetes}/busybox"
  if [ ! -x "$cache/bin/busybox" ]; then
    mkdir -p "$cache"
    (cd "$cache" && { apt-get download -qq busybox >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get download -qq busybox >/dev/null; }; } \
      && dpkg-deb -x busybox_*.deb . && rm -f busybox_*.deb) >&2
  fi
  echo "$cache/bin/busybox"
}

copy_with_libraries() {  # BINARY ROOT: the binary as ROOT/bin/busybox, and the shared libraries it loads
  local binary="$1" root="$2" lib
  mkdir -p "$root/bin"
  cp "$binary" "$root/bin/busybox"
  for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

build_busybox_based() {  # IMAGE DIR [dynamic]
  local image="$1" ctx digest
  ctx="$(mktemp -d)"
  trap 'rm -rf "$ctx"' RETURN
  cp -r "$here/images/$2"/. "$ctx"/
  if [ "${3:-}" = dynamic ]; then
    copy_with_libraries "$(dynamic_busybox)" "$ctx/rootfs"
  else
    mkdir -p "$ctx/rootfs/bin" && cp /bin/busybox "$ctx/rootfs/bin/busybox"
  fi
  digest="$(inputs_digest "$ctx")"
  [ "$(current_digest "$image")" = "$digest" ] || docker_build "$image" "$ctx" "$digest"
}

build_components() {
  local ctx digest
  ctx="$(mktemp -d)"
  trap 'rm -rf "$ctx"' RETURN
  # The digest covers what goes into the wheel, so unchanged sources skip the build.
  digest="$( (cd "$here" && find pyproject.toml services generated images/kybernetes -type f \
      -not -path '*/__pycache__/*' | sort | xargs sha256sum; echo "$base_image") | sha256sum | cut -c1-16)"
  [ "$(current_digest "$component_image")" = "$digest" ] && return 0
  cp "$here/images/kybernetes/Dockerfile" "$ctx/"
  # The wheel is built from a clean copy of what the components are made of:
  # setuptools reuses ./build/lib, where modules moved or deleted since an
  # earlier build linger and would ship; and tools/ (the dev launcher, which no
  # component imports: `make check` enforces it) stays out of the image.
  mkdir "$ctx/src"
  (cd "$here" && cp -r pyproject.toml README.md services generated "$ctx/src/")
  "$python" -m pip wheel -q --wheel-dir "$ctx/wheels" "$ctx/src" 2>&1 | grep -v -i warning >&2 || true
  ls "$ctx"/wheels/kybernetes-*.whl >/dev/null
  docker_build "$component_image" "$ctx" "$digest" --build-arg "BASE_IMAGE=$base_image"
}

build_etcd() {
  local digest
  digest="$( (cat "$here/images/etcd/Dockerfile"; echo "$base_image") | sha256sum | cut -c1-16)"
  [ "$(current_digest "$etcd_image")" = "$digest" ] && return 0
  docker_build "$etcd_image" "$here/images/etcd" "$digest" --build-arg "BASE_IMAGE=$base_image"
}

build_busybox_based "$busybox_image" busybox dynamic
build_busybox_based "$pause_image" pause
if [ "${PODS_IMAGES_ONLY:-}" != "1" ]; then
  if [ "$base_image" = "kybernetes/python-base:bookworm" ]; then
    bash "$here/scripts/build-base-image.sh" "$base_image"
  fi
  build_components
  build_etcd
fi

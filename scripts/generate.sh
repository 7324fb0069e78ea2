#!/usr/bin/env bash
# Regenerates Python stubs from protos/ into the directory given (default generated/).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$here/generated}"
python="${PYTHON:-python3}"
rm -rf "$out/kybernetes"
mkdir -p "$out"
"$python" -m grpc_tools.protoc -I "$here/protos" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  $(cd "$here/protos" && find kybernetes -name '*.proto' | sort)
touch "$out/kybernetes/__init__.py" "$out/kybernetes/v1/__init__.py"

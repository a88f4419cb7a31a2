#!/usr/bin/env bash
# Regenerates libs/api from protos/ with grpcio-tools and mypy-protobuf.
# With --check, generates into a scratch folder and fails if the committed
# stubs differ (make protos-check).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$root/libs/api/src
if [[ ${1:-} == --check ]]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
cd "$root"
mapfile -t files < <(find protos -name '*.proto' | sort)
if [[ ${1:-} != --check ]]; then
  find libs/api/src/aion/api -name '*_pb2*' -delete
fi
uv run --frozen --no-sync python -m grpc_tools.protoc -I protos \
  --python_out="$out" --mypy_out="$out" \
  --grpc_python_out="$out" --mypy_grpc_out="$out" \
  "${files[@]}"
# Every generated folder is a regular package; aion/ itself stays a namespace.
find "$out/aion/api" -type d -exec sh -c '[ -f "$1/__init__.py" ] || : > "$1/__init__.py"' _ {} \;
if [[ ${1:-} == --check ]]; then
  if ! diff -r -x __pycache__ -x py.typed "$out/aion/api" "$root/libs/api/src/aion/api"; then
    echo "protos-check: libs/api differs from protos/; run 'make protos' and commit the result" >&2
    exit 1
  fi
  echo "protos-check: libs/api matches protos/"
fi

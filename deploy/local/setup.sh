#!/usr/bin/env bash
# Installs what aion needs on a fresh machine: uv (from PyPI) and the locked
# workspace. llama-cpp-python compiles from source once (about 9-13 minutes on
# two cores); uv keeps the built wheel in its cache (~/.cache/uv, outside the
# repo, keyed by the sdist), so later runs and fresh clones reuse it.
set -euo pipefail
cd "$(dirname "$0")/../.."
UV_VERSION=${UV_VERSION:-0.13}
if ! command -v uv >/dev/null 2>&1; then
  echo "setup: installing uv from PyPI"
  python3 -m pip install --quiet --user "uv>=${UV_VERSION}" 2>/dev/null \
    || python3 -m pip install --quiet "uv>=${UV_VERSION}" 2>/dev/null \
    || {  # a Python that refuses pip installs (PEP 668): uv in a venv of its own
      python3 -m venv "$HOME/.local/share/aion-uv"
      "$HOME/.local/share/aion-uv/bin/pip" install --quiet "uv>=${UV_VERSION}"
      mkdir -p "$HOME/.local/bin"
      ln -sf "$HOME/.local/share/aion-uv/bin/uv" "$HOME/.local/bin/uv"
    }
  export PATH="$HOME/.local/bin:$PATH"
fi
if ! uv run --frozen --no-sync python -c 'import llama_cpp' >/dev/null 2>&1; then
  echo "setup: syncing the workspace (the first run compiles llama-cpp-python; later runs reuse uv's cache)"
fi
# Build llama.cpp for the CPU this machine has; CUDA builds set CMAKE_ARGS=-DGGML_CUDA=on.
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
uv sync --frozen --all-packages --quiet

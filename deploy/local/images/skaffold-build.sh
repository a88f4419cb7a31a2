#!/usr/bin/env bash
# skaffold's custom builder (skaffold.yaml): builds one service's image the way
# `make images` does (buildah, the Debian base images, cached by content), then
# names it skaffold's $IMAGE and pushes that when skaffold says $PUSH_IMAGE=true.
#
#   deploy/local/images/skaffold-build.sh SERVICE
set -euo pipefail
cd "$(dirname "$0")/../../.."
export PATH="$HOME/.local/bin:$PATH"
exec uv run --no-sync python -m aion.infra.images skaffold "$1"

#!/usr/bin/env bash
# The tools `make images` needs, from the package registries only:
#   apt       buildah (the daemonless image builder) and mmdebstrap (the base
#             image's root file system), from Debian's packages, installed only
#             when missing
#   registry  distribution's OCI registry, from its Go module, built once into
#             $AION_CACHE/registry-<DISTRIBUTION_VERSION>/bin/registry
#   skaffold  skaffold from its Go module, into $AION_CACHE/skaffold-<SKAFFOLD_VERSION>/bin
#             (optional: `make images` does not need it)
#
#   deploy/local/images/build-tools.sh [apt|registry|skaffold|all]...   (all = apt registry)
#
# Builds land in a scratch folder first and are renamed when complete, as in
# deploy/local/build.sh, so an interrupted build is never taken for a finished one.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../versions.env
source "$here/../versions.env"
AION_CACHE=${AION_CACHE:-$HOME/.cache/aion}
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
mkdir -p "$AION_CACHE"

log() { printf 'images: %s\n' "$*" >&2; }

install_apt() {
  local missing=()
  command -v buildah >/dev/null || missing+=(buildah)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "installing ${missing[*]} from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# go_build NAME VERSION LDFLAGS PACKAGE@VERSION: `go install` into $AION_CACHE/NAME-VERSION/bin.
go_build() {
  local name=$1 version=$2 ldflags=$3 pkg=$4
  local final="$AION_CACHE/$name-$version"
  [[ -f "$final/.complete" ]] && return 0
  local work; work=$(mktemp -d "$AION_CACHE/.$name-build.XXXX")
  log "$name $version: building from its Go module"
  mkdir -p "$work/bin"
  GOBIN="$work/bin" CGO_ENABLED=0 go install -ldflags "-s -w $ldflags" "$pkg"
  touch "$work/.complete"
  rm -rf "$final"
  mv "$work" "$final"
  log "$name $version: done"
}

build_registry() {
  go_build registry "$DISTRIBUTION_VERSION" \
    "-X github.com/distribution/distribution/v3/version.version=$DISTRIBUTION_VERSION" \
    "github.com/distribution/distribution/v3/cmd/registry@$DISTRIBUTION_VERSION"
}

build_skaffold() {
  local final="$AION_CACHE/skaffold-$SKAFFOLD_VERSION"
  [[ -f "$final/.complete" ]] && return 0
  local v=$SKAFFOLD_VERSION mod=github.com/GoogleContainerTools/skaffold/v2 work upstream
  work=$(mktemp -d "$AION_CACHE/.skaffold-build.XXXX")
  log "skaffold $v: building through a wrapper module (its go.mod has replace directives)"
  (
    cd "$work"
    go mod init aion.local/skaffold >/dev/null 2>&1
    upstream=$(go mod download -json "$mod@$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    # Copy upstream's replaces (single-line form `replace a => b v`) so the
    # dependency graph is the one skaffold is released with.
    sed -nE 's/^replace ([^ ]+) => ([^ ]+) ([^ ]+)$/\1=\2@\3/p' "$upstream" | while read -r r; do
      go mod edit -replace "$r"
    done
    sed -nE 's/^exclude ([^ ]+) ([^ ]+)$/\1@\2/p' "$upstream" | while read -r e; do
      go mod edit -exclude "$e"
    done
    go mod edit -require "$mod@$v"
    go get "$mod/cmd/skaffold@$v"
    mkdir -p bin
    CGO_ENABLED=0 go build -ldflags "-s -w -X $mod/pkg/skaffold/version.version=$v" -o bin/skaffold "$mod/cmd/skaffold"
    rm -f go.mod go.sum
  )
  touch "$work/.complete"
  rm -rf "$final"
  mv "$work" "$final"
  log "skaffold $v: done"
}

# One build of each tool at a time; a second caller waits, then finds it done.
locked() {
  local t=$1
  (
    flock 9
    "$t"
  ) 9>"$AION_CACHE/.images-$t.lock"
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(all)
for t in "${targets[@]}"; do
  case $t in
    all) locked install_apt; locked build_registry ;;
    apt) locked install_apt ;;
    registry) locked build_registry ;;
    skaffold) locked build_skaffold ;;
    *) echo "build-tools.sh: unknown target '$t' (apt, registry, skaffold, all)" >&2; exit 2 ;;
  esac
done

#!/usr/bin/env bash
# Builds (once) the binaries aion's local infrastructure runs, from the package
# registries only: Kubernetes, etcd, kwok, Helm, MinIO, Jaeger, Prometheus,
# containerd, the CNI plugins and CoreDNS from the Go module proxy, Kafka from
# Maven Central, runc and iptables from Debian's packages. Each lands in $AION_CACHE/<name>-<version>/,
# written to a temporary folder first and renamed when complete, so an
# interrupted build is never mistaken for a finished one.
#
#   deploy/local/build.sh [kube|etcd|kwok|helm|minio|jaeger|prometheus|kafka|node|all]...
#
# node: what a real node runs beside the control plane: kubelet and kube-proxy
# (in the kube build), containerd, the CNI plugins, CoreDNS, runc/iptables/
# conntrack (apt), and the pause and probe images as OCI archives.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
AION_CACHE=${AION_CACHE:-$HOME/.cache/aion}
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0
mkdir -p "$AION_CACHE"

log() { printf 'build: %s\n' "$*" >&2; }

# done_dir NAME -> prints the final folder; returns 0 when it already exists.
ready() { [[ -f "$1/.complete" ]]; }

# build_into FINAL CMD...: run CMD with $out set to a scratch folder, then
# publish it as FINAL.
publish() {
  local final=$1 scratch=$2
  touch "$scratch/.complete"
  rm -rf "$final"
  mv "$scratch" "$final"
}

kube_dir() { echo "$AION_CACHE/kubernetes-$KUBERNETES_VERSION"; }
build_kube() {
  local final; final=$(kube_dir)
  # A cache from before the real nodes lacks the kubelet: build it again.
  ready "$final" && [[ -x "$final/bin/kubelet" ]] && return 0
  local v=$KUBERNETES_VERSION minor work
  minor=$(cut -d. -f2 <<<"$v")
  work=$(mktemp -d "$AION_CACHE/.kube-build.XXXX")
  log "kubernetes $v: resolving modules (first time only)"
  (
    cd "$work"
    go mod init aion.local/kube >/dev/null 2>&1
    # The upstream go.mod replaces each k8s.io staging module with ./staging/...;
    # a consumer must replace each with its published v0.<minor> tag instead.
    # Read the list from upstream's own go.mod so it cannot drift.
    upstream_mod=$(go mod download -json "k8s.io/kubernetes@$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    staging=$(grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/[a-z0-9-]+' "$upstream_mod" | awk '{print $1}')
    [[ -n "$staging" ]] || { log "no staging replaces found in $upstream_mod"; exit 1; }
    for m in $staging; do
      go mod edit -replace "$m=$m@v0.${v#v1.}"
    done
    go mod edit -require "k8s.io/kubernetes@$v"
    cmds="kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy"
    pkgs=(); for c in $cmds; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    go get "${pkgs[@]/%/@$v}" >/dev/null 2>&1 || go get "${pkgs[@]/%/@$v}"
    log "kubernetes $v: compiling $cmds in one go build"
    ver_pkgs="k8s.io/component-base/version k8s.io/client-go/pkg/version"
    ldflags="-s -w"
    for p in $ver_pkgs; do
      ldflags+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
      ldflags+=" -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    mkdir -p out
    go build -tags providerless -ldflags "$ldflags" -o out/ "${pkgs[@]}"
  )
  mkdir -p "$work/bin" && mv "$work"/out/* "$work/bin/" && rm -rf "$work/out"
  publish "$final" "$work"
  log "kubernetes $v: done"
}

etcd_dir() { echo "$AION_CACHE/etcd-$ETCD_VERSION"; }
build_etcd() {
  local final; final=$(etcd_dir)
  ready "$final" && return 0
  local work; work=$(mktemp -d "$AION_CACHE/.etcd-build.XXXX")
  log "etcd $ETCD_VERSION: building (a wrapper module: etcd's own go.mod has replace directives)"
  (
    cd "$work"
    go mod init aion.local/etcd >/dev/null 2>&1
    cat > main.go <<'GO'
// Command etcd is etcd's own entry point, built through a wrapper module
// because go.etcd.io/etcd/server/v3 cannot be `go install`ed directly.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
    go mod tidy >/dev/null
    mkdir -p bin
    go build -ldflags "-s -w" -o bin/etcd .
    rm -f main.go go.mod go.sum
  )
  publish "$final" "$work"
  log "etcd $ETCD_VERSION: done"
}

# go_install NAME VERSION PACKAGE...: `go install` into $AION_CACHE/NAME-VERSION/bin.
go_install() {
  local name=$1 version=$2; shift 2
  local final="$AION_CACHE/$name-$version"
  ready "$final" && return 0
  local work; work=$(mktemp -d "$AION_CACHE/.$name-build.XXXX")
  log "$name $version: building"
  mkdir -p "$work/bin"
  GOBIN="$work/bin" go install -ldflags "-s -w ${LDFLAGS_EXTRA:-}" "$@"
  publish "$final" "$work"
  log "$name $version: done"
}

build_kwok() {
  go_install kwok "$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  # kwok does nothing without stages. Take the ones its release ships (nodes
  # become Ready and renew their leases; pods go Running) from the module itself.
  local stages; stages="$AION_CACHE/kwok-$KWOK_VERSION/stages.yaml"
  [[ -f "$stages" ]] && return 0
  local src
  src=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  {
    for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
             pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
      echo "---"
      cat "$src/kustomize/stage/$f"
    done
  } > "$stages.tmp"
  mv "$stages.tmp" "$stages"
}
build_helm() {
  ready "$AION_CACHE/helm-$HELM_VERSION" && return 0
  # The ldflags of Helm's own Makefile: its version, and the Kubernetes version it
  # assumes when no cluster is asked (helm template/lint: .Capabilities.KubeVersion,
  # Chart.yaml kubeVersion checks, deprecated-API lint), which is 1.<minor of the
  # k8s.io/client-go it is built with>. Without them that stays at the source's v1.20.0.
  local gomod k8s_minor
  gomod=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  k8s_minor=$(awk '$1 == "k8s.io/client-go" { split($2, v, "."); print v[2]; exit }' "$gomod")
  [[ $k8s_minor =~ ^[0-9]+$ ]] || { log "helm $HELM_VERSION: no k8s.io/client-go version in $gomod"; return 1; }
  local flags="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  flags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  local p
  for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    flags+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$k8s_minor"
  done
  LDFLAGS_EXTRA=$flags go_install helm "$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}
build_minio() {
  LDFLAGS_EXTRA="-X github.com/minio/minio/cmd.Version=$MINIO_RELEASE -X github.com/minio/minio/cmd.ReleaseTag=$MINIO_RELEASE" \
    go_install minio "$MINIO_RELEASE" "github.com/minio/minio@$MINIO_MODULE_VERSION"
}

# Jaeger v2 (the trace store): cmd/jaeger of the v1.x module, built through a
# wrapper module because its go.mod has a replace directive, which
# `go install pkg@version` refuses. Without the jaeger-ui release assets (not in
# the module) its UI port serves a placeholder page; the query API is complete.
build_jaeger() {
  local final="$AION_CACHE/jaeger-$JAEGER_VERSION"
  ready "$final" && return 0
  local v=$JAEGER_VERSION mod=github.com/jaegertracing/jaeger work
  work=$(mktemp -d "$AION_CACHE/.jaeger-build.XXXX")
  log "jaeger $v: building through a wrapper module (its go.mod has a replace directive)"
  (
    cd "$work"
    go mod init aion.local/jaeger >/dev/null 2>&1
    upstream=$(go mod download -json "$mod@$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    sed -nE 's/^replace ([^ ]+) => ([^ ]+) ([^ ]+)$/\1=\2@\3/p' "$upstream" | while read -r r; do
      go mod edit -replace "$r"
    done
    go mod edit -require "$mod@$v"
    go get "$mod/cmd/jaeger@$v" >/dev/null 2>&1 || go get "$mod/cmd/jaeger@$v"
    mkdir -p bin
    go build -ldflags "-s -w -X $mod/internal/version.latestVersion=$v" -o bin/jaeger "$mod/cmd/jaeger"
    rm -f go.mod go.sum
  )
  publish "$final" "$work"
  log "jaeger $v: done"
}
# Prometheus and promtool. remove_all_sd drops every service discovery but the
# file and HTTP ones (plugins/minimum.go): the local server reads file_sd targets.
# The web UI's assets are built by npm, outside the Go module, and are left out
# (no builtinassets tag): the HTTP API (/api/v1, /-/ready) is complete.
build_prometheus() {
  local v=$PROMETHEUS_VERSION p=github.com/prometheus/common/version release
  release=${v#v0.}; release="${release:0:1}.${release:1}"  # v0.316.0 -> 3.16.0
  LDFLAGS_EXTRA="-X $p.Version=$release -X $p.Branch=release -X $p.Revision=$v" \
    go_install prometheus "$v" -tags remove_all_sd \
      "github.com/prometheus/prometheus/cmd/prometheus@$v" "github.com/prometheus/prometheus/cmd/promtool@$v"
}

kafka_dir() { echo "$AION_CACHE/kafka-$KAFKA_VERSION"; }
build_kafka() {
  local final; final=$(kafka_dir)
  ready "$final" && return 0
  local work; work=$(mktemp -d "$AION_CACHE/.kafka-build.XXXX")
  log "kafka $KAFKA_VERSION: fetching jars from Maven Central"
  sed -e "s/@KAFKA_VERSION@/$KAFKA_VERSION/g" -e "s/@KAFKA_SCALA@/$KAFKA_SCALA/g" \
      -e "s/@LOG4J_VERSION@/$LOG4J_VERSION/g" "$here/kafka/pom.xml" > "$work/pom.xml"
  mvn -q -B -f "$work/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$work/libs"
  rm "$work/pom.xml"
  publish "$final" "$work"
  log "kafka $KAFKA_VERSION: done"
}

# -- what a real node runs ------------------------------------------------------
# runc, iptables and conntrack come from Debian's packages, installed when missing.
build_hostpkgs() {
  local missing=() cmd pkg
  for cmd in runc:runc iptables:iptables conntrack:conntrack; do
    command -v "${cmd%%:*}" >/dev/null 2>&1 || [[ -x "/usr/sbin/${cmd%%:*}" ]] || missing+=("${cmd#*:}")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ $(id -u) -ne 0 ]]; then
    log "real nodes need ${missing[*]} (Debian packages); run as root or install them"
    return 1
  fi
  log "installing ${missing[*]} from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  for pkg in "${missing[@]}"; do log "$pkg: $(dpkg-query -W -f '${Version}' "$pkg")"; done
}
build_containerd() {
  LDFLAGS_EXTRA="-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    go_install containerd "$CONTAINERD_VERSION" -tags "no_btrfs no_devmapper no_zfs" \
      "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
      "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
      "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
}
build_cni() {
  local p=github.com/containernetworking/plugins/plugins v=$CNI_PLUGINS_VERSION
  go_install cni-plugins "$v" "$p/main/bridge@$v" "$p/main/loopback@$v" "$p/ipam/host-local@$v" \
    "$p/meta/portmap@$v"
}
build_coredns() {
  go_install coredns "$COREDNS_VERSION" "github.com/coredns/coredns@$COREDNS_VERSION"
}
# The sandbox ("pause") image, from pause.c in the Kubernetes module, as an OCI
# archive the nodes import: no registry needed.
build_pause() {
  local final="$AION_CACHE/pause-$KUBERNETES_VERSION"
  ready "$final" && return 0
  local work src; work=$(mktemp -d "$AION_CACHE/.pause-build.XXXX")
  src=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  gcc -Os -static -o "$work/pause" "$src/build/pause/linux/pause.c"
  strip "$work/pause"
  python3 "$here/cluster/oci_image.py" "$work/pause.oci.tar" "localhost/aion/pause:$KUBERNETES_VERSION" \
    --entrypoint /pause --user 65535:65535 "$work/pause=/pause"
  publish "$final" "$work"
  log "pause $KUBERNETES_VERSION: done"
}
# A small static HTTP server and client the real-node tests run in pods, cached
# by the hash of its source.
probe_dir() { echo "$AION_CACHE/probe-$(cat "$here/cluster/probe/main.go" | sha256sum | cut -c1-12)"; }
build_probe() {
  local final; final=$(probe_dir)
  ready "$final" && return 0
  local work; work=$(mktemp -d "$AION_CACHE/.probe-build.XXXX")
  (cd "$here/cluster/probe" && go build -ldflags "-s -w" -o "$work/probe" .)
  python3 "$here/cluster/oci_image.py" "$work/probe.oci.tar" "localhost/aion/probe:${final##*-}" \
    --entrypoint /probe --user 65534:65534 "$work/probe=/probe"
  publish "$final" "$work"
}

# One build per component at a time: a second caller (a test fixture, another
# terminal) waits on the lock, then finds the finished build and returns.
locked() {
  local t=$1
  (
    flock 9
    "build_$t"
  ) 9>"$AION_CACHE/.$t.lock"
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(all)
for t in "${targets[@]}"; do
  case $t in
    all) for c in kafka etcd kwok helm minio jaeger prometheus kube hostpkgs containerd cni coredns pause probe; do locked "$c"; done ;;
    node) for c in kube hostpkgs containerd cni coredns pause probe; do locked "$c"; done ;;
    kube|etcd|kwok|helm|minio|jaeger|prometheus|kafka|hostpkgs|containerd|cni|coredns|pause|probe) locked "$t" ;;
    *) echo "build.sh: unknown component '$t' (kube, etcd, kwok, helm, minio, jaeger, prometheus, kafka, node, all)" >&2; exit 2 ;;
  esac
done

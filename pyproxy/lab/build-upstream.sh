#!/usr/bin/env bash
# Build upstream Kubernetes components from their Go modules at pinned versions, into a cache
# outside the work tree: ${PYPROXY_UPSTREAM_CACHE:-~/.cache/pyproxy/upstream}/<k8s version>/bin.
# Reused when present (a stamp file per binary). Nothing here is committed but this script.
#
#   pyproxy/lab/build-upstream.sh [component ...]   # default: the control plane set
#   (or: pyproxy lab build [component ...])
#
# Components: etcd kube-apiserver kube-controller-manager kube-proxy kubectl coredns (the control
# plane set, the default), and for real nodes: kubelet kube-scheduler containerd (also ctr and
# containerd-shim-runc-v2) crictl agnhost e2e.test (upstream's e2e suite, `go test -c`).
# runc comes from Debian (apt-get install runc).
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}    # also pyproxy/lab/upstream.py K8S_VERSION
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}      # k8s 1.37's go.mod requires etcd 3.7
COREDNS_VERSION=${COREDNS_VERSION:-v1.14.7}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}  # kubelet 1.37 wants containerd 2.x (Debian has 1.6)
CRICTL_VERSION=${CRICTL_VERSION:-v1.37.0}          # sigs.k8s.io/cri-tools, same minor as Kubernetes
CACHE=${PYPROXY_UPSTREAM_CACHE:-$HOME/.cache/pyproxy/upstream}/$K8S_VERSION
BIN=$CACHE/bin
export GOFLAGS=${GOFLAGS:--mod=mod}
export CGO_ENABLED=0
mkdir -p "$BIN" "$CACHE/src"

say() { printf 'build-upstream: %s\n' "$*" >&2; }

# k8s.io/kubernetes requires its staging modules at v0.0.0 with replace lines that do not apply
# to a dependency: a wrapper module replaces each with its v0.Y.Z release, read from the
# version's own go.mod.
kubernetes_module() {
  local dir=$CACHE/src/kubernetes
  [ -f "$dir/go.sum" ] && { echo "$dir"; return; }
  mkdir -p "$dir"
  local gomod
  gomod=$(cd "$dir" && GOFLAGS= go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
          | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
  local minor=${K8S_VERSION#v1.}
  {
    echo "module pyproxy.local/upstream-kubernetes"
    echo
    sed -n 's/^go \(.*\)/go \1/p' "$gomod"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\t\1 => \1 v0.'"$minor"'#p' "$gomod"
    echo ")"
  } >"$dir/go.mod"
  cat >"$dir/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  (cd "$dir" && go mod tidy -e >/dev/null)
  echo "$dir"
}

kube_ldflags() {
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local f
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    f+=" -X $pkg.gitCommit=0000000000000000000000000000000000000000 -X $pkg.gitTreeState=clean"
    f+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "-s -w$f"
}

build_kube() {
  local name=$1 pkg=${2:-k8s.io/kubernetes/cmd/$1} dir
  dir=$(kubernetes_module)
  (cd "$dir" && go build -trimpath -ldflags "$(kube_ldflags)" -o "$BIN/$name" "$pkg")
}

# Upstream's e2e suite as one binary (what `make WHAT=test/e2e/e2e.test` builds). GOFLAGS=-mod=mod
# lets the wrapper module pick up the test-only requirements.
build_e2e() {
  local dir
  dir=$(kubernetes_module)
  (cd "$dir" && go test -c -vet=off -trimpath -ldflags "$(kube_ldflags)" -o "$BIN/e2e.test" k8s.io/kubernetes/test/e2e)
}

# containerd v2 with its CLI and the runc shim, as its Makefile builds them without cgo: btrfs needs
# cgo (left out by its build constraint), devmapper and zfs snapshotters are not needed here.
build_containerd() {
  local dir=$CACHE/src/containerd pkg=github.com/containerd/containerd/v2 v=$CONTAINERD_VERSION
  local ld="-s -w -X $pkg/version.Version=$v -X $pkg/version.Revision=$v -X $pkg/version.Package=$pkg"
  mkdir -p "$dir"
  GOBIN="$dir" go install -trimpath -tags "urfave_cli_no_docs no_btrfs no_devmapper no_zfs" -ldflags "$ld" \
    "$pkg/cmd/containerd@$v" "$pkg/cmd/ctr@$v"
  GOBIN="$dir" go install -trimpath -tags "urfave_cli_no_docs no_btrfs no_devmapper no_zfs no_grpc" -ldflags "$ld" \
    "$pkg/cmd/containerd-shim-runc-v2@$v"
  mv "$dir/containerd" "$dir/ctr" "$dir/containerd-shim-runc-v2" "$BIN/"
}

build_crictl() {
  local dir=$CACHE/src/crictl
  mkdir -p "$dir"
  GOBIN="$dir" go install -trimpath -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
  mv "$dir/crictl" "$BIN/crictl"
}

build_etcd() {
  local dir=$CACHE/src/etcd
  mkdir -p "$dir"
  if [ ! -f "$dir/go.sum" ]; then
    printf 'module pyproxy.local/upstream-etcd\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
      "$ETCD_VERSION" >"$dir/go.mod"
    cat >"$dir/main.go" <<'GO'
// etcd's own main, over the server module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    (cd "$dir" && go mod tidy >/dev/null)
  fi
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" .)
}

build_coredns() {
  local dir=$CACHE/src/coredns
  mkdir -p "$dir"
  GOBIN="$dir" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
  mv "$dir/coredns" "$BIN/coredns"
}

# The whole run is one function, parsed before it starts, and called on the last line together with
# `exit`: editing this file while a build runs cannot change what that run executes (bash reads a
# script as it goes; the control-plane build of 2 Dec ended "syntax error" after an edit).
main() {
  local components=("$@") c version start
  ((${#components[@]})) || components=(etcd kube-apiserver kube-controller-manager kube-proxy kubectl coredns)
  for c in "${components[@]}"; do
    if [ -x "$BIN/$c" ] && [ -f "$BIN/.$c.done" ]; then continue; fi
    case $c in
      etcd) version=$ETCD_VERSION ;; coredns) version=$COREDNS_VERSION ;;
      containerd) version=$CONTAINERD_VERSION ;; crictl) version=$CRICTL_VERSION ;; *) version=$K8S_VERSION ;;
    esac
    say "building $c ($version)"
    start=$SECONDS
    case $c in
      etcd) build_etcd ;;
      coredns) build_coredns ;;
      kube-apiserver|kube-controller-manager|kube-proxy|kube-scheduler|kubelet|kubectl) build_kube "$c" ;;
      agnhost) build_kube agnhost k8s.io/kubernetes/test/images/agnhost ;;
      e2e.test) build_e2e ;;
      containerd) build_containerd ;;
      crictl) build_crictl ;;
      *) say "unknown component $c"; exit 2 ;;
    esac
    touch "$BIN/.$c.done"
    say "built $c in $((SECONDS - start)) s"
  done
  echo "$BIN"
}

main "$@"; exit $?

#!/usr/bin/env bash
# Build upstream Kubernetes components from their Go modules at pinned versions, into a cache
# outside the work tree: ${PYPROXY_UPSTREAM_CACHE:-~/.cache/pyproxy/upstream}/<k8s version>/bin.
# Reused when present (a stamp file per binary). Nothing here is committed but this script.
#
#   pyproxy/lab/build-upstream.sh [component ...]   # default: the control plane set
#   (or: pyproxy lab build [component ...])
#
# Components: etcd kube-apiserver kube-controller-manager kube-proxy kubectl coredns
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}    # also pyproxy/lab/upstream.py K8S_VERSION
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}      # k8s 1.37's go.mod requires etcd 3.7
COREDNS_VERSION=${COREDNS_VERSION:-v1.14.7}
CACHE=${PYPROXY_UPSTREAM_CACHE:-$HOME/.cache/pyproxy/upstream}/$K8S_VERSION
BIN=$CACHE/bin
export GOFLAGS=${GOFLAGS:--mod=mod}
export CGO_ENABLED=0
mkdir -p "$BIN" "$CACHE/src"

components=("$@")
((${#components[@]})) || components=(etcd kube-apiserver kube-controller-manager kube-proxy kubectl coredns)

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
  local name=$1 dir
  dir=$(kubernetes_module)
  (cd "$dir" && go build -trimpath -ldflags "$(kube_ldflags)" -o "$BIN/$name" "k8s.io/kubernetes/cmd/$name")
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

for c in "${components[@]}"; do
  if [ -x "$BIN/$c" ] && [ -f "$BIN/.$c.done" ]; then continue; fi
  say "building $c ($([ "$c" = etcd ] && echo "$ETCD_VERSION" || { [ "$c" = coredns ] && echo "$COREDNS_VERSION" || echo "$K8S_VERSION"; }))"
  start=$SECONDS
  case $c in
    etcd) build_etcd ;;
    coredns) build_coredns ;;
    kube-apiserver|kube-controller-manager|kube-proxy|kube-scheduler|kubelet|kubectl) build_kube "$c" ;;
    *) say "unknown component $c"; exit 2 ;;
  esac
  touch "$BIN/.$c.done"
  say "built $c in $((SECONDS - start)) s"
done
echo "$BIN"

#!/usr/bin/env bash
# Install what pyproxy needs on Debian 12 (as root) into ./.venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
packages=(python3 python3-venv python3-pip iptables nftables ipset conntrack iproute2 dnsutils
          containernetworking-plugins kmod
          # the IPVS tests boot Debian's kernel (it has ip_vs) in qemu: tests/vm/qemu.py
          qemu-system-x86 busybox-static cpio ipvsadm
          # real nodes (tests/node): runc under upstream's containerd; the test image's tools
          runc netcat-openbsd curl bind9-dnsutils gcc
          # pyproxy's image from the Dockerfile (tests/node/test_daemonset.py): podman, a debootstrap base
          podman debootstrap)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Bridged pod traffic must pass through iptables (kube-proxy and kubeadm require br_netfilter);
# built into some kernels, a module in Debian's.
[ -d /proc/sys/net/bridge ] || modprobe br_netfilter || echo "warning: br_netfilter not available" >&2
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

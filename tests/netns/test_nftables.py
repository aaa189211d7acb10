"""The nftables backend beyond the shared service suite (which runs on it too, see
test_services.py): the CLI against the kernel, and switching a node between backends."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


from pyproxy import netns
from pyproxy.config import ProxyConfig
from pyproxy.lab import Lab
from pyproxy.lab.dataplane import LabDataplane
from pyproxy.lab.spec import parse_spec

PYPROXY = os.path.join(os.path.dirname(sys.executable), "pyproxy")
GOLDEN = os.path.join(os.path.dirname(__file__), "..", "unit", "golden", "kube_proxy_overall.yaml")


def cli(ns, *args):
    return subprocess.run(["ip", "netns", "exec", ns, PYPROXY, *args], capture_output=True, text=True)


def test_run_diff_and_cleanup(namespaces):
    ns = namespaces.new("node")
    common = ["-f", GOLDEN, "--node", "test-node", "--cluster-cidr", "10.0.0.0/8", "--backend", "nftables"]
    out = cli(ns, "run", "--once", *common)
    assert out.returncode == 0, out.stderr
    same = cli(ns, "diff", *common)
    assert (same.returncode, same.stdout.strip()) == (0, "no differences (nftables)"), same.stdout + same.stderr
    subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "element", "ip", "kube-proxy", "service-ips",
                    "{ 172.30.0.41 . tcp . 80 }"], check=True)
    changed = cli(ns, "diff", *common)
    assert changed.returncode == 1 and "172.30.0.41 . tcp . 80 : goto service-" in changed.stdout
    assert cli(ns, "cleanup").returncode == 0
    assert subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"], capture_output=True,
                          text=True).stdout.strip() == ""


SPEC = {"name": "t-sw", "nodes": [{"name": "n1", "podCIDR": "10.244.1.0/24"}],
        "pods": [{"name": "web", "node": "n1", "labels": {"app": "web"}}, {"name": "client", "node": "n1"}]}
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": "web"},
           "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"}, "ports": [{"port": 80}]}}


def iptables_chains(lab: Lab) -> str:
    return "".join(subprocess.run(["ip", "netns", "exec", lab.node_ns("n1"), f"iptables-{v}-save"],
                                  capture_output=True, text=True).stdout for v in ("legacy", "nft"))


def nft_tables(lab: Lab) -> str:
    return subprocess.run(["ip", "netns", "exec", lab.node_ns("n1"), "nft", "list", "tables"], capture_output=True,
                          text=True).stdout


def test_switching_backends_leaves_nothing_behind_and_keeps_connections():
    lab = Lab(parse_spec(SPEC)).up()
    try:
        cidr = (lab.spec.cluster_cidr,)
        LabDataplane(lab, ProxyConfig(cluster_cidrs=cidr)).apply([SERVICE])
        with netns.entered(lab.pods["client"].netns):
            held = socket.create_connection(("10.96.0.10", 80), timeout=3)
        held_file = held.makefile("rwb")
        assert b'"web"' in held_file.readline()

        def still_open() -> bool:
            held_file.write(b"ping\n")
            held_file.flush()
            return b'"web"' in held_file.readline()

        for mode, gone in (("nftables", lambda: "KUBE-" not in iptables_chains(lab)),
                           ("iptables", lambda: "kube-proxy" not in nft_tables(lab))):
            LabDataplane(lab, ProxyConfig(mode=mode, cluster_cidrs=cidr)).apply([SERVICE])
            assert gone(), f"switching to {mode} left the other backend's rules"
            assert lab.request("client", "10.96.0.10", 80).pod == "web", f"new connections work on {mode}"
            assert still_open(), f"the established connection survived the switch to {mode}"
        held.close()
    finally:
        lab.down()

"""The nftables backend beyond the shared service suite (which runs on it too, see
test_services.py): the CLI against the kernel, and switching a node between backends."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest


from pyproxy import netns
from pyproxy.config import ProxyConfig
from pyproxy.lab import Lab
from pyproxy.lab.dataplane import LabDataplane
from pyproxy.lab.spec import parse_spec
from pyproxy.nftables.apply import NftError
from tests.factories import service

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
    lab = Lab(parse_spec(SPEC)).up(replace=True)
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


def _slice(name, family, addresses, port=8080):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": f"IPv{family}",
            "metadata": {"namespace": "ns", "name": f"{name}-{family}",
                         "labels": {"kubernetes.io/service-name": name}},
            "endpoints": [{"addresses": [a]} for a in addresses], "ports": [{"name": "p", "port": port}]}


def _service(name, cluster_ips, protocol="TCP", **spec):
    return service(name, cluster_ips[0], (("p", 80, protocol),), api_version=True, clusterIPs=cluster_ips,
                   ipFamilies=["IPv4" if ":" not in ip else "IPv6" for ip in cluster_ips], **spec)


def test_element_only_changes_sent_over_netlink_match_a_full_load(namespaces):
    """An endpoint that moves is sent as an nfnetlink element batch (pyproxy/netlink/nftables.py), not through
    nft: the live table must then be exactly what loading the whole ruleset with nft gives, for
    both families and every element shape (endpoint maps, hairpin pairs, verdict maps, sets)."""
    from pyproxy.model import parse_objects
    from pyproxy.nftables import diff
    from pyproxy.proxier import Proxier

    ns = namespaces.new("node")
    with netns.entered(ns):  # the Proxier sets sysctls where it is made
        proxier = Proxier("n1", ProxyConfig(mode="nftables"), families=(4, 6))
    nodeport = {"type": "NodePort", "externalIPs": ["192.0.2.7"]}
    objects = [_service("a", ["10.96.0.1", "fd00:96::1"], **nodeport), _service("b", ["10.96.0.2"], protocol="UDP"),
               _slice("a", 4, ["10.244.1.2", "10.244.1.3"]), _slice("a", 6, ["fd00:244::2", "fd00:244::3"]),
               _slice("b", 4, ["10.244.1.2"], port=53)]
    sent: list[str] = []
    with netns.entered(ns):
        proxier.sync(parse_objects(objects), full=True)
        for backend in proxier.backends.values():
            real = backend.run
            backend.run = lambda script, real=real: (sent.append(script), real(script))
        # same endpoint counts, new addresses: element changes only
        objects[2:] = [_slice("a", 4, ["10.244.1.2", "10.244.1.9"]), _slice("a", 6, ["fd00:244::2", "fd00:244::9"]),
                       _slice("b", 4, ["10.244.1.4"], port=53)]
        report = proxier.sync(parse_objects(objects))
        assert sent == [], "element-only changes must not start nft"
        assert all(not r.full for r in report.results.values())
        for family, backend in proxier.backends.items():
            assert diff.diff(backend.last_ruleset) == "", f"IPv{family} table differs from a full load"
        live = subprocess.run(["nft", "list", "table", "ip6", "kube-proxy"], capture_output=True, text=True).stdout
        assert "fd00:244::9 . 8080" in live and "fd00:244::3" not in live
        # a failed batch changes nothing and makes the next sync full (and that repairs the table)
        backend4 = proxier.backends[4]
        subprocess.run(["nft", "delete", "element", "ip", "kube-proxy", "hairpin", "{ 10.244.1.9 . 10.244.1.9 }"],
                       check=True)
        objects[2] = _slice("a", 4, ["10.244.1.2", "10.244.1.8"])
        with pytest.raises(NftError, match="element update failed"):
            proxier.sync(parse_objects(objects))
        assert "10.244.1.9 . 8080" in subprocess.run(["nft", "list", "table", "ip", "kube-proxy"],
                                                      capture_output=True, text=True).stdout
        assert proxier.sync(parse_objects(objects)).results[4].full
        assert diff.diff(backend4.last_ruleset) == ""


def test_a_large_element_only_change_fits_one_batch(namespaces):
    """3,000 endpoints that all move: 12,000 element deletions and additions (endpoint map and
    hairpin pairs), 24 messages of one nfnetlink transaction."""
    from pyproxy.model import parse_objects
    from pyproxy.nftables import diff
    from pyproxy.proxier import Proxier

    ns = namespaces.new("node")
    with netns.entered(ns):
        proxier = Proxier("n1", ProxyConfig(mode="nftables"))
        def objects(base):
            addresses = [f"10.{base}.{i // 250}.{i % 250 + 1}" for i in range(3000)]
            return [_service("big", ["10.96.0.1"]), _slice("big", 4, addresses)]
        proxier.sync(parse_objects(objects(200)), full=True)
        report = proxier.sync(parse_objects(objects(201)))
        assert not report.results[4].full
        backend = proxier.backends[4]
        assert diff.diff(backend.last_ruleset) == ""
        live = subprocess.run(["nft", "list", "table", "ip", "kube-proxy"], capture_output=True, text=True).stdout
        assert "10.201.11.250 . 8080" in live and "10.200.0.1 . 8080" not in live

"""nftables mode against upstream's kube-proxy nftables mode, by traffic: pyproxy's table layout
differs by design (sharded endpoint maps), so the two are compared by what users see. The same
Services (real pods, slices from upstream's controller) are served first by kube-proxy, then by
pyproxy, on both nodes; every probe (from pods, a node and the external client) must reach the
same set of pods with the same source addresses, or fail the same way."""

from __future__ import annotations

import json
import subprocess

import pytest

from pyproxy.lab import Lab
from pyproxy.lab.lab import LabError
from pyproxy.lab.proxies import deploy_pyproxy, start_kube_proxy, start_pyproxy
from pyproxy.lab.spec import parse_spec
from tests.netns.test_services import SPEC as LAB_SUITE

from .helpers import eventually, service, set_lb_ingress

SPEC = {**LAB_SUITE, "name": "t-nftd", "controlPlane": "kubernetes"}  # the lab suite's nodes and pods
EXTERNAL_IP, LB_IP = "172.18.100.10", "172.18.100.20"


def services(lab):
    ext = f"{lab.spec.external_ip}/32"
    return [
        service("web", "web", "10.96.0.10"),
        service("np", "web", "10.96.0.11", type="NodePort", ports=[{"port": 80, "targetPort": 80, "nodePort": 30080}]),
        service("local", "solo", "10.96.0.12", type="NodePort", externalTrafficPolicy="Local", externalIPs=[EXTERNAL_IP],
                ports=[{"port": 80, "targetPort": 80, "nodePort": 30081}]),
        service("itp", "web", "10.96.0.13", internalTrafficPolicy="Local"),
        service("lb-ok", "solo", "10.96.0.14", type="LoadBalancer", loadBalancerSourceRanges=[ext]),
        service("lb-no", "solo", "10.96.0.15", type="LoadBalancer", ports=[{"port": 81, "targetPort": 80}],
                loadBalancerSourceRanges=["192.0.2.0/24"]),
        service("empty", "nobody", "10.96.0.16"),
        service("udp", "solo", "10.96.0.17", ports=[{"port": 53, "targetPort": 80, "protocol": "UDP"}]),
    ]


def probes(lab):
    n1, n2 = (str(n.ip) for n in lab.spec.nodes)
    return [("client-1", "10.96.0.10", 80, "tcp"), ("client-2", "10.96.0.10", 80, "tcp"),
            ("external", n1, 30080, "tcp"), ("external", n2, 30080, "tcp"),
            ("external", n1, 30081, "tcp"), ("external", n2, 30081, "tcp"),
            ("client-1", EXTERNAL_IP, 80, "tcp"), ("external", EXTERNAL_IP, 80, "tcp"),
            ("n1", "10.96.0.10", 80, "tcp"), ("n1", EXTERNAL_IP, 80, "tcp"), ("n2", n2, 30081, "tcp"),
            ("client-1", "10.96.0.13", 80, "tcp"), ("client-2", "10.96.0.13", 80, "tcp"),
            ("external", LB_IP, 80, "tcp"), ("external", LB_IP, 81, "tcp"),
            ("client-1", "10.96.0.16", 80, "tcp"), ("client-1", "10.96.0.17", 53, "udp"),
            ("client-1", "10.96.0.10", 81, "tcp"),
            # no Service holds it, but it is in the API server's ServiceCIDR: dropped
            ("client-1", UNALLOCATED, 80, "tcp"), ("n1", UNALLOCATED, 80, "tcp")]


def outcome(lab, src, ip, port, proto, n=16) -> frozenset:
    seen = set()
    for i in range(n):
        try:
            reply = lab.request(src, ip, port, proto, timeout=0.5)
            seen.add((reply.pod, reply.client))
        except ConnectionRefusedError:
            seen.add("refused")
        except TimeoutError:
            seen.add("timeout")
        except OSError as err:
            seen.add(type(err).__name__)
        if i == 1 and seen <= {"timeout", "refused"}:
            break  # a probe that fails, fails every time: two tries tell
    return frozenset(seen)


@pytest.fixture(scope="module")
def lab():
    lab = Lab(parse_spec(SPEC)).up(replace=True)
    try:
        for svc in services(lab):
            lab.cp.api.apply(svc)
        for name in ("lb-ok", "lb-no"):
            set_lb_ingress(lab.cp.api, name, LB_IP)
        yield lab
    finally:
        lab.down()


UNALLOCATED = "10.96.200.200"


def count_leaks(lab) -> None:
    """A counter at the router in front of the cluster (the external namespace, the nodes'
    default route) of packets for an address no Service holds: one that no proxy drops leaves
    the cluster."""
    script = ("table ip pxt-leaks {\n counter leaked { }\n chain in { type filter hook prerouting priority 0; "
              f"ip daddr {UNALLOCATED} counter name leaked; }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", lab.external_ns, "nft", "-f", "-"], input=script, text=True, check=True)


def leaked(lab) -> int:
    out = json.loads(lab.exec_node(lab.external_ns, ["nft", "-j", "list", "counter", "ip", "pxt-leaks", "leaked"]))
    return next(item["counter"]["packets"] for item in out["nftables"] if "counter" in item)


def table(lab, node: str) -> str:
    try:
        return lab.exec_node(node, ["nft", "list", "table", "ip", "kube-proxy"])
    except LabError:  # not there yet
        return ""


def serve_and_probe(lab) -> dict:
    for node in ("n1", "n2"):  # every input in: the ServiceCIDR comes by a watch of its own
        eventually(lambda: "Drop traffic to unallocated ClusterIPs" in table(lab, node), 20, 0.2)
    eventually(lambda: outcome(lab, "client-1", "10.96.0.11", 80, "tcp", n=1) != {"timeout"}, 20, 0.2)
    n2 = str(lab.spec.node("n2").ip)
    eventually(lambda: outcome(lab, "external", n2, 30081, "tcp", n=1) != {"timeout"}, 20, 0.2)
    return {p: outcome(lab, *p) for p in probes(lab)}


def test_pyproxy_nftables_serves_what_kube_proxy_nftables_serves(lab):
    for node in ("n1", "n2"):
        start_kube_proxy(lab, node, lab.node_ns(node), mode="nftables")
    count_leaks(lab)
    upstream = serve_and_probe(lab)
    assert leaked(lab) == 0, "kube-proxy drops traffic to an unallocated ClusterIP"
    for node in ("n1", "n2"):
        lab.processes.stop(f"kube-proxy-{node}@{lab.node_ns(node)}")
        for family in ("ip", "ip6"):
            lab.exec_node(node, ["nft", "delete", "table", family, "kube-proxy"])
    kube, config = deploy_pyproxy(lab, {"mode": "nftables"})
    for node in ("n1", "n2"):
        start_pyproxy(lab, node, kube, config)
    ours = serve_and_probe(lab)
    assert leaked(lab) == 0, "pyproxy lets traffic to an unallocated ClusterIP leave the cluster"
    differences = {p: (upstream[p], ours[p]) for p in upstream if upstream[p] != ours[p]}
    assert not differences, "\n".join(f"{p}: kube-proxy {sorted(map(str, a))} pyproxy {sorted(map(str, b))}"
                                      for p, (a, b) in differences.items())
    assert any(("web-1", lab.pods["client-1"].ip) in o for o in ours.values()), "the probes reached pods at all"

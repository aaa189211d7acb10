"""IPv6 and dual stack through the same code path: a dual-stack lab (pyproxy-bridge gives pods an
address of each family), dual-stack Services, real packets over both families, with both iptables variants and nftables."""

import os
import time

import pytest

from pyproxy.config import ProxyConfig
from pyproxy.lab import Lab
from pyproxy.lab.dataplane import LabDataplane
from pyproxy.lab.spec import LabSpec, parse_spec

SPEC = {"name": "t-ds", "ipv6": True,
        "nodes": [{"name": "n1", "podCIDR": "10.244.1.0/24"}, {"name": "n2", "podCIDR": "10.244.2.0/24"}],
        "pods": [{"name": "web-1", "node": "n1", "labels": {"app": "web"}},
                 {"name": "web-2", "node": "n2", "labels": {"app": "web"}}, {"name": "client", "node": "n1"}]}


@pytest.fixture(scope="module", params=["legacy", "nft", "nftables"] + (["ipvs"] if os.environ.get("PYPROXY_IN_VM") else []))
def env(request):
    lab = Lab(parse_spec({**SPEC, "name": f"t-ds{request.param[:4]}"})).up(replace=True)
    try:
        mode = request.param if request.param in ("nftables", "ipvs") else "iptables"
        variant = "auto" if mode != "iptables" else request.param
        config = ProxyConfig(mode=mode, cluster_cidrs=(lab.spec.cluster_cidr, LabSpec.CLUSTER_CIDR6),
                             iptables_variant=variant)
        yield lab, LabDataplane(lab, config)
    finally:
        lab.down()


def dual(name, selector, v4, v6, **spec):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": name},
            "spec": {"clusterIP": v4, "clusterIPs": [v4, v6], "ipFamilies": ["IPv4", "IPv6"],
                     "ipFamilyPolicy": "RequireDualStack", "selector": {"app": selector},
                     "ports": [{"port": 80, "targetPort": 80, **({"nodePort": spec.pop("nodePort")} if "nodePort" in spec else {})}],
                     **spec}}


def test_pods_get_both_families(env):
    lab, _ = env
    assert lab.pods["web-1"].ip6.startswith("fd00:10:244:1::") and lab.pods["web-2"].ip6.startswith("fd00:10:244:2::")


def test_dual_stack_cluster_ip_over_both_families(env):
    lab, dp = env
    dp.apply([dual("web", "web", "10.96.0.10", "fd00:96::10")])
    for ip, own in (("10.96.0.10", lab.pods["client"].ip), ("fd00:96::10", lab.pods["client"].ip6)):
        seen = {lab.request("client", ip, 80).pod for _ in range(20)}
        assert seen == {"web-1", "web-2"}
        assert lab.request("client", ip, 80).client == own, "the pod's own address, in its family"


def test_ipv6_node_port_from_outside_is_masqueraded(env):
    lab, dp = env
    dp.apply([dual("np", "web", "10.96.0.11", "fd00:96::11", type="NodePort", nodePort=30080)])
    node6 = str(lab.spec.nodes[0].ip6)
    seen = set()
    for _ in range(20):
        reply = lab.request("external", node6, 30080)
        seen.add(reply.pod)
        assert reply.client != str(lab.spec.external_ip6)
    assert seen == {"web-1", "web-2"}


def test_ipv6_no_endpoints_is_rejected(env):
    """Refused, never a timeout. Known issue: over IPv6 the refusal arrives after ~1 s (the ICMPv6
    error for the first SYN is lost here and TCP's retransmission gets it); IPv4 is immediate."""
    lab, dp = env
    dp.apply([dual("empty", "nobody", "10.96.0.12", "fd00:96::12")])
    start = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        lab.request("client", "10.96.0.12", 80, timeout=3)
    assert time.monotonic() - start < 0.5
    start = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        lab.request("client", "fd00:96::12", 80, timeout=3)
    assert time.monotonic() - start < 2

"""kube-proxy's end-to-end service behaviours, in the lab, with real packets.

Every test programs the lab's nodes with its own set of Services (the previous test's services
are removed by that sync, so partial syncs are exercised all along) and asserts what a user would
see: which pod answered, the source address it saw, a refusal or a timeout. The whole module
runs with iptables-legacy, iptables-nft and the nftables backend, and in the qemu guest of
tests/vm (which has ip_vs) with the IPVS backend as well.
"""

from __future__ import annotations

import collections
import os
import socket
import time

import pytest

from pyproxy import netns
from pyproxy.config import ProxyConfig
from pyproxy.lab import Lab
from pyproxy.lab.cluster import cluster_objects
from pyproxy.lab.dataplane import LabDataplane
from pyproxy.lab.lab import list_netns
from pyproxy.lab.spec import parse_spec
from pyproxy.nftables.apply import NftError
from tests import factories

SPEC = {
    "name": "t-svc",
    "nodes": [{"name": "n1", "podCIDR": "10.244.1.0/24"}, {"name": "n2", "podCIDR": "10.244.2.0/24"}],
    "pods": [
        {"name": "web-1", "node": "n1", "labels": {"app": "web"}},
        {"name": "web-2", "node": "n2", "labels": {"app": "web"}},
        {"name": "solo", "node": "n2", "labels": {"app": "solo"}},
        {"name": "client-1", "node": "n1", "labels": {"app": "client"}},
        {"name": "client-2", "node": "n2", "labels": {"app": "client"}},
    ],
}
EXTERNAL_IP = "172.18.100.10"  # routed by the external client to node n1
LB_IP = "172.18.100.20"


# IPVS needs the ip_vs module: this suite runs with it in the qemu guest (tests/vm), which sets PYPROXY_IN_VM
BACKENDS = ["legacy", "nft", "nftables"] + (["ipvs"] if os.environ.get("PYPROXY_IN_VM") else [])


@pytest.fixture(scope="module", params=BACKENDS)
def env(request):
    lab = Lab(parse_spec({**SPEC, "name": f"t-{request.param[:5]}"})).up(replace=True)
    try:
        if request.param in ("nftables", "ipvs"):
            config = ProxyConfig(mode=request.param, cluster_cidrs=(lab.spec.cluster_cidr,))
        else:
            config = ProxyConfig(cluster_cidrs=(lab.spec.cluster_cidr,), iptables_variant=request.param)
        dp = LabDataplane(lab, config)
        yield lab, dp
        dp.cleanup()
    finally:
        lab.down()
    assert not [ns for ns in list_netns() if ns.startswith(lab.prefix)]


def service(name, selector, ports=((80, 80),), cluster_ip="10.96.0.10", **spec):
    """ports: (port, targetPort[, protocol[, nodePort[, name]]])"""
    out_ports = []
    for i, p in enumerate(ports):
        port, target = p[0], p[1]
        protocol = p[2] if len(p) > 2 else "TCP"
        entry = {"name": p[4] if len(p) > 4 else f"p{i}", "port": port, "targetPort": target, "protocol": protocol}
        if len(p) > 3 and p[3]:
            entry["nodePort"] = p[3]
        out_ports.append(entry)
    return factories.service(name, cluster_ip, out_ports, namespace="default", api_version=True,
                             selector={"app": selector}, **spec)


def answers(lab, src, ip, port, proto="tcp", n=10):
    # 3.5 s: a connection whose first two SYNs are lost (retransmits at 1 s and 3 s) still counts;
    # an endpoint that never answers still fails the test
    return collections.Counter(lab.request(src, ip, port, proto, timeout=3.5).pod for _ in range(n))


def refused_quickly(lab, src, ip, port, proto="tcp"):
    start = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        lab.request(src, ip, port, proto, timeout=3)
    return time.monotonic() - start < 1.0


def times_out(lab, src, ip, port, proto="tcp"):
    with pytest.raises(TimeoutError):
        lab.request(src, ip, port, proto, timeout=0.7)
    return True


def node_ip(lab, name):
    return str(lab.spec.node(name).ip)


def test_cluster_ip_serves_every_endpoint_and_keeps_the_pod_source(env):
    lab, dp = env
    dp.apply([service("web", "web")])
    seen = answers(lab, "client-1", "10.96.0.10", 80, n=30)
    assert set(seen) == {"web-1", "web-2"}, "both endpoints, on both nodes, are used"
    for _ in range(5):
        reply = lab.request("client-2", "10.96.0.10", 80)
        assert reply.client == lab.pods["client-2"].ip, "a pod's own address is kept through a ClusterIP"


def test_multiport_and_same_port_with_two_protocols(env):
    lab, dp = env
    dp.apply([service("multi", "solo", ports=((80, 80), (81, 8080), (80, 8080, "UDP")))])
    assert lab.request("client-1", "10.96.0.10", 80).port == 80
    assert lab.request("client-1", "10.96.0.10", 81).port == 8080
    udp = lab.request("client-1", "10.96.0.10", 80, "udp")
    assert (udp.pod, udp.port) == ("solo", 8080), "UDP 80 goes to its own target port"


def test_ports_added_and_removed(env):
    lab, dp = env
    dp.apply([service("web", "solo", ports=((80, 80),))])
    assert lab.request("client-1", "10.96.0.10", 80).pod == "solo"
    dp.apply([service("web", "solo", ports=((80, 80), (90, 8080)))])
    assert lab.request("client-1", "10.96.0.10", 90).port == 8080
    dp.apply([service("web", "solo", ports=((90, 8080),))])
    assert lab.request("client-1", "10.96.0.10", 90).pod == "solo"
    with pytest.raises(OSError):
        lab.request("client-1", "10.96.0.10", 80, timeout=0.7)


def test_hairpin_a_pod_reaches_itself_through_its_service(env):
    lab, dp = env
    dp.apply([service("solo", "solo")])
    for _ in range(3):
        reply = lab.request("solo", "10.96.0.10", 80)
        assert reply.pod == "solo"
        assert reply.client != lab.pods["solo"].ip, "hairpin traffic is masqueraded so the reply comes back"


def test_services_up_down_and_recreated(env):
    lab, dp = env
    dp.apply([service("a", "solo", cluster_ip="10.96.0.11"), service("b", "web", cluster_ip="10.96.0.12")])
    assert lab.request("client-1", "10.96.0.11", 80).pod == "solo"
    dp.apply([service("b", "web", cluster_ip="10.96.0.12")])
    with pytest.raises(OSError):
        lab.request("client-1", "10.96.0.11", 80, timeout=0.7)
    assert lab.request("client-1", "10.96.0.12", 80).pod in ("web-1", "web-2")
    dp.apply([service("a", "solo", cluster_ip="10.96.0.11"), service("b", "web", cluster_ip="10.96.0.12")])
    assert lab.request("client-1", "10.96.0.11", 80).pod == "solo"


def test_no_endpoints_is_rejected_immediately(env):
    lab, dp = env
    dp.apply([service("empty", "nobody", type="NodePort", ports=((80, 80, "TCP", 30090),)),
              service("empty-udp", "nobody", cluster_ip="10.96.0.13", ports=((53, 53, "UDP"),))])
    assert refused_quickly(lab, "client-1", "10.96.0.10", 80)
    assert refused_quickly(lab, "client-1", "10.96.0.13", 53, "udp")
    assert refused_quickly(lab, "external", node_ip(lab, "n1"), 30090)


def test_node_port_from_outside_with_cluster_policy_is_masqueraded_on_every_node(env):
    lab, dp = env
    dp.apply([service("np", "web", type="NodePort", ports=((80, 80, "TCP", 30080),))])
    for node in ("n1", "n2"):
        seen = set()
        for _ in range(20):
            reply = lab.request("external", node_ip(lab, node), 30080)
            seen.add(reply.pod)
            assert reply.client != str(lab.spec.external_ip), "eTP=Cluster: the client address is SNATed"
        assert seen == {"web-1", "web-2"}, f"through {node}: endpoints on both nodes"


def test_external_traffic_policy_local(env):
    lab, dp = env
    dp.apply([service("local", "solo", type="NodePort", externalTrafficPolicy="Local",
                      ports=((80, 80, "TCP", 30081),), externalIPs=[EXTERNAL_IP])])
    reply = lab.request("external", node_ip(lab, "n2"), 30081)
    assert reply.pod == "solo"
    assert reply.client == str(lab.spec.external_ip), "eTP=Local keeps the client address"
    assert times_out(lab, "external", node_ip(lab, "n1"), 30081), "no local endpoint on n1: dropped"
    # pods short-circuit to any endpoint, even through a node without a local one
    assert lab.request("client-1", node_ip(lab, "n1"), 30081).pod == "solo"
    assert lab.request("client-1", EXTERNAL_IP, 80).pod == "solo"
    assert lab.request("n1", EXTERNAL_IP, 80).pod == "solo", "so does the node itself"


def test_internal_traffic_policy_local(env):
    lab, dp = env
    dp.apply([service("itp", "web", internalTrafficPolicy="Local")])
    assert set(answers(lab, "client-1", "10.96.0.10", 80)) == {"web-1"}
    assert set(answers(lab, "client-2", "10.96.0.10", 80)) == {"web-2"}
    dp.apply([service("itp", "solo", internalTrafficPolicy="Local")])
    assert times_out(lab, "client-1", "10.96.0.10", 80), "no local endpoint: dropped, not sent elsewhere"


def test_session_affinity_holds_and_expires(env):
    lab, dp = env
    dp.apply([service("sticky", "web", sessionAffinity="ClientIP",
                      sessionAffinityConfig={"clientIP": {"timeoutSeconds": 2}})])
    first = answers(lab, "client-1", "10.96.0.10", 80, n=20)
    assert len(first) == 1, f"all 20 connections to the same pod: {first}"
    if dp.config.mode == "ipvs":
        return  # an IPVS persistence template lives on while connections it placed do (TIME_WAIT: 2 min)
    time.sleep(3.2)
    later = set()
    for _ in range(12):  # each new choice is random once the entry expired
        later.add(lab.request("client-1", "10.96.0.10", 80).pod)
        time.sleep(2.2) if len(later) < 2 else None
        if len(later) == 2:
            break
    assert later == {"web-1", "web-2"}, "after the timeout a new endpoint can be chosen"


def test_external_ips(env):
    lab, dp = env
    dp.apply([service("ext", "solo", externalIPs=[EXTERNAL_IP])])
    reply = lab.request("external", EXTERNAL_IP, 80)
    assert reply.pod == "solo" and reply.client != str(lab.spec.external_ip)


def test_load_balancer_source_ranges_allow_and_deny(env):
    lab, dp = env
    allowed = service("lb-ok", "solo", type="LoadBalancer", cluster_ip="10.96.0.14",
                      ports=((80, 80, "TCP", 30082),), loadBalancerSourceRanges=["172.18.0.100/32"])
    allowed["status"] = {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}
    denied = service("lb-no", "solo", type="LoadBalancer", cluster_ip="10.96.0.15",
                     ports=((81, 80, "TCP", 30083),), loadBalancerSourceRanges=["192.0.2.0/24"])
    denied["status"] = {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}
    dp.apply([allowed, denied])
    assert lab.request("external", LB_IP, 80).pod == "solo"
    assert times_out(lab, "external", LB_IP, 81)


def test_terminating_endpoints_are_a_fallback_only(env):
    lab, dp = env
    terminating = {"ready": False, "serving": True, "terminating": True}
    dp.apply([service("web", "web")], conditions={"web-1": terminating})
    assert set(answers(lab, "client-1", "10.96.0.10", 80)) == {"web-2"}, "ready endpoints first"
    dp.apply([service("web", "web")], conditions={"web-1": terminating, "web-2": terminating})
    assert set(answers(lab, "client-1", "10.96.0.10", 80, n=20)) == {"web-1", "web-2"}, \
        "no ready endpoint left: serving terminating ones take the traffic"


def test_service_proxy_name_label_leaves_the_service_to_another_proxy(env):
    lab, dp = env
    claimed = service("claimed", "solo")
    claimed["metadata"]["labels"] = {"service.kubernetes.io/service-proxy-name": "other-proxy"}
    dp.apply([claimed, service("ours", "solo", cluster_ip="10.96.0.16")])
    assert lab.request("client-1", "10.96.0.16", 80).pod == "solo"
    with pytest.raises(OSError):
        lab.request("client-1", "10.96.0.10", 80, timeout=0.7)


def test_udp_flows_follow_the_new_pod_when_the_server_pod_is_replaced(env):
    """A UDP client keeps its socket (same 5-tuple) while its server pod is replaced: without the
    stale conntrack cleanup it would keep sending to the dead pod's address."""
    lab, dp = env
    dp.apply([service("dns", "solo", ports=((53, 80, "UDP"),))])
    with netns.entered(lab.pods["client-1"].netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(2)
        sock.connect(("10.96.0.10", 53))
        sock.send(b"q")
        assert b'"solo"' in sock.recv(1000)
        old_ip = lab.pods["solo"].ip
        spec = next(p for p in lab.spec.pods if p.name == "solo")
        lab.delete_pod("solo")
        lab.add_pod(spec)
        assert lab.pods["solo"].ip != old_ip, "the new pod has a new address"
        dp.apply([service("dns", "solo", ports=((53, 80, "UDP"),))])
        sock.send(b"q")
        # the old pod's namespace is gone: any answer on this socket comes from the new pod
        assert b'"solo"' in sock.recv(1000)


def test_a_malformed_service_does_not_stop_the_others(env):
    lab, dp = env
    bad = service("bad", "solo", cluster_ip="10.96.0.17", ports=((70000, 80),))
    objects = cluster_objects(lab, [service("good", "solo"), bad])
    from pyproxy.model import parse_objects

    cluster = parse_objects(objects)
    assert any("Service default/bad: spec.ports[0].port" in e for e in cluster.errors)
    for name, proxier in dp.proxiers.items():
        with netns.entered(lab.node_ns(name)):
            proxier.sync(cluster)
    assert lab.request("client-1", "10.96.0.10", 80).pod == "solo"


def test_a_failed_restore_leaves_the_previous_rules(env):
    lab, dp = env
    dp.apply([service("web", "solo")])
    proxier = dp.proxiers["n1"]
    backend = proxier.backends[4]
    backend = getattr(backend, "iptables", backend)  # IPVS mode writes its chains with iptables-restore too
    tool = "restore_tool" if hasattr(backend, "restore_tool") else None
    real_tool = getattr(backend, "restore_tool", None)
    if tool:
        backend.restore_tool = "false"  # iptables-restore fails
    else:
        backend.run = lambda script: (_ for _ in ()).throw(NftError("injected: nft -f failed"))
    try:
        from pyproxy.iptables.apply import ApplyError

        from pyproxy.ipvs.apply import IpvsError

        with netns.entered(lab.node_ns("n1")), pytest.raises((ApplyError, NftError, IpvsError)):
            proxier.sync(parse_cluster(lab, [service("web", "web-nobody")]))
    finally:
        if tool:
            backend.restore_tool = real_tool
        else:
            del backend.run
    assert lab.request("client-1", "10.96.0.10", 80).pod == "solo", "the previous rules still serve"
    dp.apply([service("web", "web")])  # and the next sync (a full one) recovers
    assert set(answers(lab, "client-1", "10.96.0.10", 80, n=20)) == {"web-1", "web-2"}


def parse_cluster(lab, services):
    from pyproxy.model import parse_objects

    return parse_objects(cluster_objects(lab, services))

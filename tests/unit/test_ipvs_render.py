"""IPVS mode rendering (pure; the kernel side runs in the qemu guest, tests/vm)."""

import ipaddress

from pyproxy.config import ProxyConfig, parse_config
from pyproxy.ipvs.render import render, set_name
from pyproxy.model import parse_objects
from pyproxy.view import build_view
from tests.factories import endpoint_slice, node, service

NODE = node("n1", "172.18.0.11", pod_cidr="10.244.1.0/24")


def ruleset(*objects, config=None):
    config = config or ProxyConfig(mode="ipvs", cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),))
    return render(build_view(parse_objects([NODE, *objects]), "n1"), config, 4)


def save_lines(rs):
    return [line for vs in sorted(rs.servers().values()) for line in vs.save_lines()]


def test_a_virtual_server_per_frontend_with_nat_real_servers():
    rs = ruleset(service("a", "10.96.0.1", node_port=30080, type="LoadBalancer", externalIPs=["192.0.2.7"],
                         sessionAffinity="ClientIP"),
                 endpoint_slice("a", [("10.244.1.2", "n1"), ("10.244.2.2", "n2")]))
    lines = save_lines(rs)
    assert "-A -t 10.96.0.1:80 -s rr -p 10800" in lines, "ClientIP affinity is IPVS persistence, default 3h"
    for frontend in ("10.96.0.1:80", "192.0.2.7:80", "172.18.0.11:30080"):
        assert f"-a -t {frontend} -r 10.244.1.2:8080 -m -w 1" in lines, "NAT (masquerade) real servers, weight 1"
        assert f"-a -t {frontend} -r 10.244.2.2:8080 -m -w 1" in lines
    assert rs.bind_addresses() == {"10.96.0.1", "192.0.2.7"}, "service addresses go on kube-ipvs0, node IPs do not"
    sets = rs.sets()
    assert sets["KUBE-CLUSTER-IP"] == {"10.96.0.1,tcp:80"} and sets["KUBE-EXTERNAL-IP"] == {"192.0.2.7,tcp:80"}
    assert sets["KUBE-NODE-PORT-TCP"] == {"30080"}
    assert sets["KUBE-LOOP-BACK"] == {"10.244.1.2,tcp:8080,10.244.1.2"}, "hairpin entries for local endpoints only"


def test_scheduler_comes_from_the_config():
    config = parse_config({"mode": "ipvs", "ipvs": {"scheduler": "lc"}})
    rs = ruleset(service("a", "10.96.0.1"), endpoint_slice("a", [("10.244.1.2", "n1")]), config=config)
    assert save_lines(rs)[0] == "-A -t 10.96.0.1:80 -s lc"


def test_no_endpoints_are_rejected_and_local_policy_without_local_endpoints_drops_outside_traffic():
    rs = ruleset(service("empty", "10.96.0.1"),
                 service("local", "10.96.0.2", node_port=30081, type="NodePort", externalTrafficPolicy="Local"),
                 endpoint_slice("local", [("10.244.2.2", "n2")]))
    sets = rs.sets()
    assert sets["KUBE-NO-ENDPOINTS"] == {"10.96.0.1,tcp:80"}
    assert sets["KUBE-NO-LOCAL-ENDPOINTS"] == {"172.18.0.11,tcp:30081"}
    assert sets["KUBE-NODE-PORT-LOCAL-TCP"] == {"30081"}
    assert "-a -t 172.18.0.11:30081 -r 10.244.2.2:8080 -m -w 1" in save_lines(rs), \
        "pods on this node still reach the service through the node port (kube-proxy keeps the cluster endpoints)"
    assert ('-A KUBE-SERVICES -m comment --comment "pyproxy: service frontends without endpoints (rejected)" '
            "-m set --match-set KUBE-NO-ENDPOINTS dst,dst -j REJECT --reject-with icmp-port-unreachable") in rs.filter
    assert any("KUBE-NO-LOCAL-ENDPOINTS dst,dst ! -s 10.244.0.0/16 -m addrtype ! --src-type LOCAL -j DROP" in r
               for r in rs.filter)


def test_kube_proxy_iptables_rules_in_its_order():
    rs = ruleset(service("a", "10.96.0.1", node_port=30080, type="NodePort"),
                 endpoint_slice("a", [("10.244.1.2", "n1")]))
    nat = [r for r in rs.nat if r.startswith("-A ")]
    assert nat[0] == "-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN"
    assert nat.index('-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for '
                     'solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE') < \
        nat.index("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN")
    assert ('-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" '
            "-m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ") in nat
    assert nat[-1] == "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"
    assert "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT" in rs.filter
    assert ("filter", "INPUT", '-m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER') in rs.jumps


def test_ipv6_sets_are_prefixed_and_unchanged_ports_are_reused():
    assert set_name("KUBE-LOAD-BALANCER-SOURCE-CIDR", 6) == "KUBE-6-LOAD-BALANCER-SOURCE-CID"  # 31 characters
    from pyproxy.ipvs.render import IpvsRenderer
    from pyproxy.view import ViewBuilder

    config = ProxyConfig(mode="ipvs")
    renderer, views = IpvsRenderer(config), ViewBuilder("n1")
    objects = [NODE, service("a", "10.96.0.1"), endpoint_slice("a", [("10.244.1.2", "n1")]), service("b", "10.96.0.2"),
               endpoint_slice("b", [("10.244.1.3", "n1")])]
    first = renderer.render(views.build(parse_objects(objects)), 4)
    objects[-1] = endpoint_slice("b", [("10.244.1.4", "n1")])
    second = renderer.render(views.build(parse_objects(objects)), 4)
    assert second.ports["ns/a:http/TCP/ipv4"] is first.ports["ns/a:http/TCP/ipv4"], "an unchanged port is not re-rendered"
    assert second.ports["ns/b:http/TCP/ipv4"] is not first.ports["ns/b:http/TCP/ipv4"]


def test_node_ports_only_on_the_node_port_addresses():
    """nodePortAddresses narrows IPVS mode's NodePort virtual servers as it does the other modes'."""
    objects = [node("n1", "172.18.0.11", external_ips=["192.0.2.1"], pod_cidr="10.244.1.0/24"),
               service("a", "10.96.0.1", node_port=30080, type="NodePort"),
               endpoint_slice("a", [("10.244.1.2", "n1")])]
    narrowed = parse_config({"mode": "ipvs", "nodePortAddresses": ["192.0.2.0/24"]})
    frontends = {vs.address() for vs in render(build_view(parse_objects(objects), "n1"), narrowed, 4).servers().values()}
    assert frontends == {"10.96.0.1:80", "192.0.2.1:30080"}
    every = render(build_view(parse_objects(objects), "n1"), parse_config({"mode": "ipvs"}), 4)
    assert {vs.address() for vs in every.servers().values()} == {"10.96.0.1:80", "172.18.0.11:30080", "192.0.2.1:30080"}


def test_an_address_that_comes_within_node_port_addresses_gets_the_node_ports_of_unchanged_services():
    """The memo's context holds the node-port addresses: a port whose view is unchanged is rendered
    again when an interface address joins nodePortAddresses."""
    from pyproxy.ipvs.render import IpvsRenderer
    from pyproxy.view import ViewBuilder

    config = parse_config({"mode": "ipvs", "nodePortAddresses": ["172.18.0.0/16"]})
    renderer, views = IpvsRenderer(config), ViewBuilder("n1")
    cluster = parse_objects([node("n1", "172.18.0.11"), service("a", "10.96.0.1", node_port=30080, type="NodePort"),
                             endpoint_slice("a", [("10.244.1.2", "n1")])])
    ip = ipaddress.ip_address
    first = renderer.render(views.build(cluster, interface_ips=(ip("172.18.0.11"),)), 4)
    second = renderer.render(views.build(cluster, interface_ips=(ip("172.18.0.11"), ip("172.18.0.99"))), 4)
    assert "172.18.0.99:30080" not in {vs.address() for vs in first.servers().values()}
    assert "172.18.0.99:30080" in {vs.address() for vs in second.servers().values()}

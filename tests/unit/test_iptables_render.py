"""iptables render against literal expected rules (pure: no kernel)."""

import os

import pytest
import yaml

from pyproxy.config import parse_config
from pyproxy.iptables.render import render
from pyproxy.model import parse_objects
from pyproxy.view import build_view
from tests.factories import endpoint, endpoint_slice, node, service

from .iptables_text import parse_tables, undefined_jumps

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def load(path):
    with open(os.path.join(GOLDEN, path)) as f:
        return parse_objects(yaml.safe_load_all(f))


def test_matches_kube_proxys_own_expected_rules():
    """kube-proxy's TestOverallIPTablesRules, same cluster, same expected rules.

    The expectation omits kube-proxy's two nfacct rules (-m nfacct metrics counters): pyproxy
    does not depend on the nfacct module; everything else is byte for byte."""
    cluster = load("kube_proxy_overall.yaml")
    assert cluster.errors == []
    config = parse_config({"clusterCIDR": "10.0.0.0/8"})
    ruleset = render(build_view(cluster, "test-node"), config, random_fully=False)
    with open(os.path.join(GOLDEN, "kube_proxy_overall.rules")) as f:
        expected = parse_tables(f.read())
    assert parse_tables(ruleset.restore_text()) == expected


# this file's objects: one port p80/TCP (80 -> 8080), apiVersion written
SERVICE = {"ports": (("p80", 80, "TCP"),), "api_version": True}
SLICE = {"ports": (("p80", 8080, "TCP"),), "api_version": True}


def rules_for(objs, node="node-a", config=None, family=4):
    cluster = parse_objects(objs)
    assert cluster.errors == []
    ruleset = render(build_view(cluster, node), config or parse_config({"clusterCIDR": "10.244.0.0/16"}), family)
    tables = parse_tables(ruleset.restore_text())
    assert undefined_jumps(tables) == [], "a rule jumps to a chain that is not defined"
    return tables


def all_rules(tables):
    return [r for chains in tables.values() for rules in chains.values() for r in rules]


CASES = [
    ("three endpoints balance 1/3, 1/2, rest",
     [service("web", **SERVICE), endpoint_slice("web", [f"10.244.1.{i}" for i in (2, 3, 4)], **SLICE)],
     ["--probability 0.3333333333", "--probability 0.5000000000"], ["has no endpoints"]),
    ("no endpoints: REJECT in filter, no nat chain",
     [service("empty", **SERVICE)],
     ['"ns/empty:p80 has no endpoints" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j REJECT'], ["KUBE-SVC-"]),
    ("not-ready endpoints do not count",
     [service("web", **SERVICE), endpoint_slice("web", [endpoint("10.244.1.2", ready=False)], **SLICE)],
     ["has no endpoints"], ["-j DNAT"]),
    ("terminating endpoints are used only when no ready one remains",
     [service("web", **SERVICE),
      endpoint_slice("web", [endpoint("10.244.1.2", ready=False, serving=True, terminating=True)], **SLICE)],
     ["--to-destination 10.244.1.2:8080"], ["has no endpoints"]),
    ("udp and sctp",
     [service("dns", ports=(("dns", 53, "UDP"), ("s", 9, "SCTP")), api_version=True),
      endpoint_slice("dns", ["10.244.1.2"], ports=(("dns", 5353, "UDP"), ("s", 9, "SCTP")), api_version=True)],
     ["-m udp -p udp -d 10.96.0.10 --dport 53", "-m sctp -p sctp -d 10.96.0.10 --dport 9",
      "-m udp -p udp -j DNAT --to-destination 10.244.1.2:5353"], []),
    ("internalTrafficPolicy Local without local endpoints drops cluster IP traffic",
     [service("itp", internalTrafficPolicy="Local", **SERVICE),
      endpoint_slice("itp", [("10.244.2.2", "node-b")], **SLICE)],
     ['"ns/itp:p80 has no local endpoints" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j DROP'], ["-j DNAT"]),
    ("internalTrafficPolicy Local uses the local endpoint only",
     [service("itp", internalTrafficPolicy="Local", **SERVICE),
      endpoint_slice("itp", [("10.244.2.2", "node-b"), ("10.244.1.2", "node-a")], **SLICE)],
     ["-j KUBE-SVL-", "--to-destination 10.244.1.2:8080"], ["10.244.2.2:8080"]),
    ("service-proxy-name label: left to the other proxy",
     [service("other", labels={"service.kubernetes.io/service-proxy-name": "someone-else"}, **SERVICE),
      endpoint_slice("other", ["10.244.1.2"], **SLICE)], [], ["ns/other"]),
    ("headless: no rules",
     [service("hl", cluster_ip="None", **SERVICE), endpoint_slice("hl", ["10.244.1.2"], **SLICE)], [], ["ns/hl"]),
    ("topology hints: only this zone's endpoints",
     [service("topo", annotations={"service.kubernetes.io/topology-mode": "Auto"}, **SERVICE),
      endpoint_slice("topo", [endpoint("10.244.1.2", zones=["zone-a"]), endpoint("10.244.2.2", zones=["zone-b"])],
                     **SLICE),
      node("node-a", zone="zone-a")],
     ["--to-destination 10.244.1.2:8080"], ["10.244.2.2:8080"]),
]


@pytest.mark.parametrize("case, objs, present, absent", CASES, ids=[c[0] for c in CASES])
def test_render_table(case, objs, present, absent):
    text = "\n".join(all_rules(rules_for(objs)))
    for fragment in present:
        assert fragment in text, fragment
    for fragment in absent:
        assert fragment not in text, fragment


def test_etp_local_without_local_endpoints_drops_external_but_keeps_short_circuits():
    tables = rules_for([service("lb", node_port=30080, type="NodePort", externalTrafficPolicy="Local",
                                externalIPs=["172.18.100.5"], **SERVICE),
                        endpoint_slice("lb", [("10.244.2.2", "node-b")], **SLICE)])
    ext = [c for c in tables["nat"] if c.startswith("KUBE-EXT-")][0]
    assert [r.split(" -j ")[-1] for r in tables["nat"][ext]][:3] == [
        tables["nat"][ext][0].split(" -j ")[-1], "KUBE-MARK-MASQ", tables["nat"][ext][0].split(" -j ")[-1]]
    assert "-s 10.244.0.0/16" in tables["nat"][ext][0], "pods short-circuit to all endpoints"
    assert len(tables["nat"][ext]) == 3, "no fall-through to the (empty) local chain"
    drops = "\n".join(tables["filter"]["KUBE-EXTERNAL-SERVICES"])
    assert "-d 172.18.100.5 --dport 80 -j DROP" in drops and "--dport 30080 -j DROP" in drops


def test_masquerade_bit_and_masquerade_all():
    config = parse_config({"clusterCIDR": "10.244.0.0/16", "iptables": {"masqueradeBit": 5, "masqueradeAll": True}})
    tables = rules_for([service("web", **SERVICE), endpoint_slice("web", ["10.244.1.2"], **SLICE)], config=config)
    assert tables["nat"]["KUBE-MARK-MASQ"] == ["-A KUBE-MARK-MASQ -j MARK --or-mark 0x20"]
    svc_chain = [c for c in tables["nat"] if c.startswith("KUBE-SVC-")][0]
    assert tables["nat"][svc_chain][0].endswith("--dport 80 -j KUBE-MARK-MASQ"), "masqueradeAll: no source test"


def test_ipv6_uses_the_same_code_path():
    objs = [service("v6", cluster_ip="fd00:96::10", **SERVICE),
            endpoint_slice("v6", ["fd00:244::2"], family="IPv6", **SLICE)]
    tables = rules_for(objs, config=parse_config({"clusterCIDR": "fd00:244::/64"}), family=6)
    text = "\n".join(all_rules(tables))
    assert "-d fd00:96::10 --dport 80" in text and "--to-destination [fd00:244::2]:8080" in text
    assert "! -d ::1/128 -j KUBE-NODEPORTS" in text
    # as kube-proxy (found by the differential against it): the chain and its jumps exist in
    # IPv6 too, empty (the localnet drop is IPv4's)
    assert tables["filter"]["KUBE-FIREWALL"] == []


def test_node_port_addresses_limit_the_node_port_tail_call():
    config = parse_config({"clusterCIDR": "10.244.0.0/16", "nodePortAddresses": ["172.18.0.0/24"]})
    objs = [service("np", node_port=30080, type="NodePort", **SERVICE), endpoint_slice("np", ["10.244.1.2"], **SLICE),
            node("node-a", "172.18.0.11", "192.0.2.1")]
    services = rules_for(objs, config=config)["nat"]["KUBE-SERVICES"]
    assert services[-1].endswith("-d 172.18.0.11 -j KUBE-NODEPORTS")
    assert "192.0.2.1" not in "\n".join(services)


def test_large_clusters_drop_per_endpoint_comments():
    objs = [service("big", **SERVICE),
            endpoint_slice("big", [f"10.244.{i // 250}.{i % 250 + 1}" for i in range(1001)], **SLICE)]
    nat = rules_for(objs)["nat"]
    sep = [c for c in nat if c.startswith("KUBE-SEP-")][0]
    assert "--comment" not in nat[sep][0]


def test_session_affinity_rules():
    objs = [service("sticky", sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 30}},
                    **SERVICE),
            endpoint_slice("sticky", ["10.244.1.2", "10.244.1.3"], **SLICE)]
    text = "\n".join(all_rules(rules_for(objs)))
    assert text.count("--rcheck --seconds 30 --reap") == 2
    assert text.count("--set -m tcp -p tcp -j DNAT") == 2


def test_both_policies_local_still_short_circuit_pods_to_cluster_endpoints():
    """kube-proxy's UsesClusterEndpoints: an externally reachable service needs its cluster chain
    even when both policies are Local, for the pod short-circuit to jump to."""
    tables = rules_for([service("both", node_port=30085, type="NodePort", externalTrafficPolicy="Local",
                                internalTrafficPolicy="Local", **SERVICE),
                        endpoint_slice("both", [("10.244.2.2", "node-b")], **SLICE)])
    ext = [c for c in tables["nat"] if c.startswith("KUBE-EXT-")][0]
    short_circuit = tables["nat"][ext][0]
    assert "-s 10.244.0.0/16" in short_circuit
    target = short_circuit.split(" -j ")[-1]
    assert target.startswith("KUBE-SVC-") and "--to-destination 10.244.2.2:8080" in "\n".join(all_rules(tables))

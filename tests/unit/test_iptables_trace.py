"""`trace` verdicts for a table of packets through the kube-proxy golden cluster (pure)."""

import os

import pytest
import yaml

from pyproxy.config import parse_config
from pyproxy.iptables.render import render
from pyproxy.iptables.trace import Packet, Tracer
from pyproxy.model import parse_objects
from pyproxy.view import build_view

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "kube_proxy_overall.yaml")
NODE_IP = "192.168.0.2"


@pytest.fixture(scope="module")
def tracer():
    with open(GOLDEN) as f:
        cluster = parse_objects(yaml.safe_load_all(f))
    ruleset = render(build_view(cluster, "test-node"), parse_config({"clusterCIDR": "10.0.0.0/8"}))
    return Tracer(ruleset, [NODE_IP])


# (case, packet, expected {outcome: probability})
PACKETS = [
    ("pod to cluster IP keeps its source", Packet("10.0.0.2", "172.30.0.41", 80), {"ACCEPT to 10.180.0.1:80 (source kept)": 1}),
    ("outside the cluster CIDR to cluster IP is masqueraded", Packet("192.168.0.50", "172.30.0.41", 80),
     {"ACCEPT to 10.180.0.1:80 (masqueraded)": 1}),
    ("two endpoints, half each", Packet("10.0.0.2", "172.30.0.44", 80),
     {"ACCEPT to 10.180.0.4:80 (source kept)": 0.5, "ACCEPT to 10.180.0.5:80 (source kept)": 0.5}),
    ("no endpoints: REJECT", Packet("10.0.0.2", "172.30.0.46", 80), {"REJECT": 1}),
    ("wrong port on a cluster IP: not ours", Packet("10.0.0.2", "172.30.0.41", 81),
     {"ACCEPT to 172.30.0.41:81 (source kept)": 1}),
    ("node port from outside, eTP=Cluster: masqueraded", Packet("203.0.113.7", NODE_IP, 3003),
     {"ACCEPT to 10.180.0.3:80 (masqueraded)": 1}),
    ("node port, eTP=Local without local endpoints: dropped", Packet("203.0.113.7", NODE_IP, 3001), {"DROP": 1}),
    ("external IP, eTP=Local without local endpoints: dropped", Packet("203.0.113.7", "192.168.99.22", 80), {"DROP": 1}),
    ("pod to an eTP=Local LB IP short-circuits", Packet("10.0.0.2", "1.2.3.4", 80),
     {"ACCEPT to 10.180.0.2:80 (source kept)": 1}),
    ("the node itself to an eTP=Local LB IP: masqueraded", Packet(NODE_IP, "1.2.3.4", 80, local_origin=True),
     {"ACCEPT to 10.180.0.2:80 (masqueraded)": 1}),
    ("LB source range allows", Packet("203.0.113.1", "5.6.7.8", 80), {"ACCEPT to 10.180.0.3:80 (masqueraded)": 1}),
    ("LB source range denies", Packet("203.0.113.200", "5.6.7.8", 80), {"DROP": 1}),
    ("health check node port accepted", Packet("203.0.113.7", NODE_IP, 30000), {"ACCEPT to 192.168.0.2:30000 (source kept)": 1}),
]


@pytest.mark.parametrize("case, packet, expected", PACKETS, ids=[c[0] for c in PACKETS])
def test_trace_verdicts(tracer, case, packet, expected):
    outcomes = tracer.trace(packet)
    got = {o.describe(): round(o.probability, 6) for o in outcomes}
    assert got == expected


def test_trace_lists_the_rules_that_decided(tracer):
    (outcome,) = tracer.trace(Packet("10.0.0.2", "172.30.0.46", 80))
    assert outcome.rules[-1].endswith("--dport 80 -j REJECT")
    assert "ns6/svc6:p80 has no endpoints" in outcome.rules[-1]


# The nftables tracer walks the same cluster rendered for the nftables backend: same outcomes,
# except where kube-proxy's nftables mode itself differs (it rejects unknown cluster-IP ports).
NFT_DIFFERENCES = {"wrong port on a cluster IP: not ours": {"REJECT": 1}}


@pytest.fixture(scope="module")
def nft_tracer():
    from pyproxy.nftables.render import render as render_nft
    from pyproxy.nftables.trace import NftTracer

    with open(GOLDEN) as f:
        cluster = parse_objects(yaml.safe_load_all(f))
    config = parse_config({"clusterCIDR": "10.0.0.0/8", "mode": "nftables"})
    return NftTracer(render_nft(build_view(cluster, "test-node"), config), [NODE_IP])


@pytest.mark.parametrize("case, packet, expected", PACKETS, ids=[c[0] for c in PACKETS])
def test_nftables_trace_verdicts_match_iptables(nft_tracer, case, packet, expected):
    outcomes = nft_tracer.trace(packet)
    got = {o.describe(): round(o.probability, 6) for o in outcomes}
    assert got == NFT_DIFFERENCES.get(case, expected)


def test_nftables_trace_lists_the_rules_that_decided(nft_tracer):
    (outcome,) = nft_tracer.trace(Packet("10.0.0.2", "172.30.0.46", 80))
    assert outcome.rules == ["filter-forward: 172.30.0.46 . tcp . 80 vmap @no-endpoint-services -> goto reject-chain",
                             "reject-chain: reject"]
    (sticky,) = nft_tracer.trace(Packet("10.0.0.2", "172.30.0.45", 80))
    assert sticky.packet.dnat == ("10.180.0.3", 80) and any("update @affinity-" in r for r in sticky.rules)

"""Changes as values: a ViewBuilder told what changed (the Store's change set) builds the same view
as one built from nothing, and says truly what differs from its previous view; the renderers and
the conntrack cleaner that follow those changes instead of comparing every port end where a
fresh render (and a full comparison) would. Random sequences of service changes, as in the DNS
zone's property test."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from pyproxy.config import ProxyConfig
from pyproxy.conntrack import ConntrackCleaner, StaleRule
from pyproxy.health import health_check_ports
from pyproxy.iptables.render import Renderer, render as iptables_render
from pyproxy.ipvs.render import IpvsRenderer, render as ipvs_render
from pyproxy.model import parse_objects
from pyproxy.nftables.render import NftRenderer
from pyproxy.view import PortFollower, ViewBuilder, build_view
from tests.factories import endpoint, endpoint_slice, node, replace_service, service

NAMES = ["s0", "s1", "s2", "s3"]
NODE = node("node-a", "172.18.0.11")

# None: the service is gone; else (protocol, NodePort?, Local policy?, dual-stack?, endpoints as
# (number, on node-a?, ready?, in the IPv6 slice too?))
_SERVICE_STATE = st.one_of(
    st.none(),
    st.tuples(st.sampled_from(["TCP", "UDP"]), st.booleans(), st.booleans(), st.booleans(),
              st.lists(st.tuples(st.integers(1, 5), st.booleans(), st.booleans(), st.booleans()), max_size=3,
                       unique_by=lambda e: e[0])))


def _objects(name: str, state) -> list[dict]:
    if state is None:
        return []
    protocol, node_port, local, dual, eps = state
    number = NAMES.index(name)
    spec = {"type": "NodePort", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000 + number} \
        if node_port and local else {"type": "NodePort"} if node_port else {}
    if dual:
        spec |= {"clusterIPs": [f"10.96.0.{10 + number}", f"fd00:96::{10 + number}"], "ipFamilies": ["IPv4", "IPv6"]}
    objects = [service(name, f"10.96.0.{10 + number}", ports=(("p", 80, protocol),),
                       node_port=30000 + number if node_port else 0, **spec),
               endpoint_slice(name, [endpoint(f"10.244.{number}.{ip}", "node-a" if here else "node-b", ready=ready)
                                     for ip, here, ready, _ in eps], ports=(("p", 8080, protocol),))]
    if dual:
        objects.append(endpoint_slice(name, [endpoint(f"fd00:244:{number}::{ip}", "node-a" if here else "node-b",
                                                      ready=not ready)  # the other family's readiness differs
                                             for ip, here, ready, six in eps if six],
                                      ports=(("p", 8080, protocol),), family="IPv6", name=f"{name}-six"))
    return objects


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(NAMES), _SERVICE_STATE), min_size=1, max_size=10), st.booleans())
def test_views_and_renders_that_follow_changes_end_as_built_from_nothing(steps, told):
    """`told`: the builder gets each step's change set; otherwise it compares every object."""
    config = ProxyConfig()
    builder = ViewBuilder("node-a")
    # each renderer twice: one follows the view's changes, the other compares every port (the nft
    # renderer keeps its endpoint map shards, so it is not compared with a fresh render)
    renderers = {"nft": (lambda: NftRenderer(config), lambda r, v: r.render(v, 4).script(), None),
                 "iptables": (lambda: Renderer(config), lambda r, v: r.render(v, 4).dump_text(),
                              lambda v: iptables_render(v, config).dump_text()),
                 "ipvs": (lambda: IpvsRenderer(config), lambda r, v: r.render(v, 4).text(),
                          lambda v: ipvs_render(v, config).text())}
    following = {kind: make() for kind, (make, _, _) in renderers.items()}
    comparing = {kind: make() for kind, (make, _, _) in renderers.items()}
    told_cleaner, comparing_cleaner = ConntrackCleaner(4), ConntrackCleaner(4)
    local_policy = PortFollower(lambda p: p.internal_policy_local or p.external_policy_local)  # the daemon's
    cluster = parse_objects([NODE])
    previous = builder.build(cluster)
    for kind, (_, text, _) in renderers.items():
        text(following[kind], previous)
        text(comparing[kind], replace(previous, changes=None))
    told_cleaner._suspects(previous, False)
    comparing_cleaner._suspects(replace(previous, changes=None), False)
    for name, state in steps:
        changes = replace_service(cluster, name, _objects(name, state))
        view = builder.build(cluster, changes=changes if told else None)
        scratch = build_view(cluster, "node-a")
        assert view == scratch and view.ports == scratch.ports

        # the changes say exactly how this view differs from the previous one
        before, after = {p.key: p for p in previous.ports}, {p.key: p for p in view.ports}
        assert view.changes is not None and view.changes.since == previous.sequence
        assert {p.key for p in view.changes.added} == after.keys() - before.keys()
        assert view.changes.removed == before.keys() - after.keys()
        assert {p.key for p in view.changes.changed} == {k for k in after.keys() & before.keys()
                                                          if after[k] != before[k]}
        assert all(after[k] is before[k] for k in after.keys() & before.keys() if after[k] == before[k]), \
            "an unchanged port keeps its object"

        for kind, (_, text, fresh) in renderers.items():
            followed = text(following[kind], view)
            assert followed == text(comparing[kind], replace(view, changes=None)), kind
            assert fresh is None or followed == fresh(view), kind
        nft = following["nft"]
        rendered, render_changes = nft._memo.output(4), nft._memo.changes
        rebuilt = {k: v for k, v in render_changes.base.items() if k not in render_changes.removed}
        assert {k for k, v in rendered.items() if rebuilt.get(k) is not v} == render_changes.changed
        assert rebuilt.keys() - render_changes.changed <= rendered.keys()

        assert told_cleaner._suspects(view, False) == comparing_cleaner._suspects(replace(view, changes=None), False)
        followed_rule, walked_rule = StaleRule(told_cleaner._udp.ports.values(), view.node_ips_of(4)), \
            StaleRule.of(view, 4)
        assert (followed_rule.frontends, followed_rule.node_ports) == (walked_rule.frontends, walked_rule.node_ports)
        local_policy.follow(view)
        assert health_check_ports(local_policy.ports.values()) == health_check_ports(view.ports)
        previous = view


def test_health_check_counts_do_not_depend_on_the_order_ports_changed_in():
    """A dual-stack eTP=Local service has one healthCheckNodePort for two ports: its count is the
    one a walk of the whole view gives, whichever family's port changed last."""
    def objects(v4_ready: bool) -> list[dict]:
        spec = {"type": "NodePort", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
                "clusterIPs": ["10.96.0.10", "fd00:96::10"], "ipFamilies": ["IPv4", "IPv6"]}
        return [service("web", "10.96.0.10", ports=(("p", 80),), node_port=30000, **spec),
                endpoint_slice("web", [endpoint("10.244.0.5", "node-a", ready=v4_ready)], ports=(("p", 8080),)),
                endpoint_slice("web", [endpoint("fd00:244::5", "node-a")], ports=(("p", 8080),), family="IPv6",
                               name="web-six")]

    builder, local_policy = ViewBuilder("node-a"), PortFollower(lambda p: p.external_policy_local)
    cluster = parse_objects([NODE, *objects(True)])
    local_policy.follow(builder.build(cluster))
    changes = replace_service(cluster, "web", objects(False))
    view = builder.build(cluster, changes=changes)
    assert [p.family for p in view.changes.changed] == [4], "only the IPv4 port changed"
    local_policy.follow(view)
    assert health_check_ports(local_policy.ports.values()) == health_check_ports(view.ports) == {32000: ("ns", "web", 1)}

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
from pyproxy.conntrack import ConntrackCleaner
from pyproxy.iptables.render import Renderer, render as iptables_render
from pyproxy.ipvs.render import IpvsRenderer, render as ipvs_render
from pyproxy.model import parse_objects
from pyproxy.nftables.render import NftRenderer
from pyproxy.view import ViewBuilder, build_view
from tests.factories import endpoint, endpoint_slice, node, replace_service, service

NAMES = ["s0", "s1", "s2", "s3"]
NODE = node("node-a", "172.18.0.11")

# None: the service is gone; else (protocol, NodePort?, Local policy?, endpoints as (number, on node-a?, ready?))
_SERVICE_STATE = st.one_of(
    st.none(),
    st.tuples(st.sampled_from(["TCP", "UDP"]), st.booleans(), st.booleans(),
              st.lists(st.tuples(st.integers(1, 5), st.booleans(), st.booleans()), max_size=3,
                       unique_by=lambda e: e[0])))


def _objects(name: str, state) -> list[dict]:
    if state is None:
        return []
    protocol, node_port, local, eps = state
    number = NAMES.index(name)
    spec = {"type": "NodePort", "externalTrafficPolicy": "Local"} if node_port and local else \
        {"type": "NodePort"} if node_port else {}
    return [service(name, f"10.96.0.{10 + number}", ports=(("p", 80, protocol),),
                    node_port=30000 + number if node_port else 0, **spec),
            endpoint_slice(name, [endpoint(f"10.244.{number}.{ip}", "node-a" if here else "node-b", ready=ready)
                                  for ip, here, ready in eps], ports=(("p", 8080, protocol),))]


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
        previous = view

"""The DNS responder as a pure function of its zone: bytes in, bytes out (no socket). The
server over real UDP and TCP sockets, and its zone following the API, are tests/api/test_dns.py."""

from __future__ import annotations

import struct
from unittest.mock import patch

import dns.message
import dns.name
import dns.rcode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyproxy.dns.server import Responder, render_wire
from pyproxy.dns.zone import ZoneBuilder, build_zone
from pyproxy.layered import Layered
from pyproxy.model import parse_objects
from tests.factories import endpoint, endpoint_slice, replace_service, service

# the objects of both files: one port http/TCP (80 -> 8080)
SERVICE = {"ports": (("http", 80, "TCP"),)}
SLICE = {"ports": (("http", 8080, "TCP"),)}

CLUSTER = [
    service("web", **SERVICE),
    service("db", "None", **SERVICE),
    endpoint_slice("db", [endpoint("10.244.1.5", hostname="db-0"), endpoint("10.244.1.6", hostname="db-1"),
                          endpoint("10.244.1.7", ready=False),
                          endpoint("10.244.1.8", ready=False, serving=True, terminating=True)], **SLICE),
    service("plain", "None", **SERVICE),
    endpoint_slice("plain", ["10.244.2.9"], **SLICE),
    service("empty", "None", **SERVICE),
    service("notready", "None", publishNotReadyAddresses=True, **SERVICE),
    endpoint_slice("notready", [endpoint("10.244.3.3", ready=False)], **SLICE),
    service("big", "None", **SERVICE),
    endpoint_slice("big", [f"10.245.{i // 200}.{i % 200 + 1}" for i in range(200)], **SLICE),
    service("v6", "None", **SERVICE),
    endpoint_slice("v6", ["fd00::5"], family="IPv6", **SLICE),
    service("ext", None, ports=(), type="ExternalName", externalName="example.org"),
]



RESPONDER = Responder(build_zone(parse_objects(CLUSTER)))


def test_servfail_until_the_first_sync_then_updates():
    responder = Responder()
    query = dns.message.make_query("web.ns.svc.cluster.local", "A").to_wire()
    assert dns.message.from_wire(responder.respond(query)).rcode() == dns.rcode.SERVFAIL
    responder.zone = build_zone(parse_objects(CLUSTER))
    assert dns.message.from_wire(responder.respond(query)).rcode() == dns.rcode.NOERROR


def test_random_names_do_not_grow_the_answer_cache():
    """Finding 5 of the bad-input issue: every unique name asked used to stay cached forever."""
    from pyproxy.dns.zone import NEGATIVE_CACHE_ENTRIES

    responder = Responder()
    responder.zone = zone = build_zone(parse_objects(CLUSTER))
    web = dns.message.make_query("web.ns.svc.cluster.local", "A").to_wire()
    responder.respond(web)
    positive = len(zone.wire_cache)
    for i in range(3 * NEGATIVE_CACHE_ENTRIES):
        out = responder.respond(dns.message.make_query(f"r{i}.ns.svc.cluster.local", "A").to_wire())
        assert dns.message.from_wire(out).rcode() == dns.rcode.NXDOMAIN
    assert len(zone.negative_wire) <= NEGATIVE_CACHE_ENTRIES and len(zone._negative) <= NEGATIVE_CACHE_ENTRIES
    assert len(zone.wire_cache) == positive, "real answers stay cached, random names do not push them out"
    assert dns.message.from_wire(responder.respond(web)).answer


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=600))
def test_random_bytes_never_crash_nor_amplify(data):
    out = RESPONDER.respond(data)
    assert out is None or len(out) <= max(len(data), 12) + 11, "answer larger than the query justifies"


@settings(max_examples=300, deadline=None)
@given(qid=st.integers(0, 65535), flags=st.integers(0, 65535), counts=st.tuples(*[st.integers(0, 65535)] * 4),
       tail=st.binary(max_size=300))
def test_hostile_headers_and_counts(qid, flags, counts, tail):
    data = struct.pack("!HHHHHH", qid, flags, *counts) + tail
    out = RESPONDER.respond(data)
    if out is not None:
        assert out[:2] == data[:2] and out[2] & 0x80, "a response to this query's ID"


def test_compression_loops_and_pointers_in_questions_are_refused():
    loop = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    out = RESPONDER.respond(loop)
    assert out is not None and out[3] & 0xF == dns.rcode.FORMERR and len(out) == 12


def _answers(responder: Responder, name: str, rdtype: str = "A") -> tuple:
    reply = dns.message.from_wire(responder.respond(dns.message.make_query(name, rdtype).to_wire()))
    return reply.rcode(), sorted(rd.to_text() for rr in reply.answer for rd in rr), \
        sorted(rd.to_text() for rr in reply.additional for rd in rr)


def test_an_updated_zone_keeps_the_answers_of_unchanged_names_and_renews_the_changed_ones():
    builder = ZoneBuilder()
    objects = parse_objects(CLUSTER)
    responder = Responder(builder.update(objects))
    for name in ("web", "db", "plain"):
        _answers(responder, f"{name}.ns.svc.cluster.local")  # rendered and cached
    key = (dns.name.from_text("web.ns.svc.cluster.local").to_wire(), 1, False)
    web_answer = responder.zone.wire_cache[key]
    # db loses an endpoint, plain goes away; web's Service and slices are the very same objects
    changed = parse_objects([o for o in CLUSTER if o["metadata"]["name"] not in ("plain", "db-x")]
                            + [endpoint_slice("db", [endpoint("10.244.1.5", hostname="db-0")], **SLICE)])
    changed.services["ns/web"] = objects.services["ns/web"]
    old = responder.zone
    responder.zone = builder.update(changed)
    assert responder.zone.fresh(responder.zone.wire_cache.get(key), key[0]) is web_answer, "not rendered again"
    assert _answers(responder, "db.ns.svc.cluster.local")[1] == ["10.244.1.5"]
    renders = []
    with patch("pyproxy.dns.server.render_wire", side_effect=lambda *a: renders.append(a) or render_wire(*a)):
        for _ in range(3):
            assert _answers(responder, "plain.ns.svc.cluster.local")[0] == dns.rcode.NXDOMAIN
    assert len(renders) == 1, "a removed name's negative answer is rendered once, then cached"
    assert _answers(Responder(old), "db.ns.svc.cluster.local")[1] == ["10.244.1.5", "10.244.1.6"], (
        "a query still reading the previous version sees it whole")


# A small world of services whose objects change one at a time, instances kept for the unchanged
# (as the store keeps them): the builder's zone after each step answers as a zone built from nothing.
_HOSTS = st.lists(st.sampled_from(["a", "b", None]), max_size=3)
_SERVICE_STATE = st.one_of(
    st.none(),
    st.tuples(st.just("headless"), st.lists(st.integers(1, 6), max_size=4, unique=True), _HOSTS, st.booleans()),
    st.tuples(st.just("clusterIP"), st.integers(1, 3), st.booleans()),
)


def _objects(name: str, state) -> list[dict]:
    if state is None:
        return []
    if state[0] == "clusterIP":
        _, ip, named = state
        return [service(name, f"10.96.0.{ip}", ports=(("http", 80),) if named else (80,))]
    _, ips, hosts, not_ready = state
    eps = [endpoint(f"10.244.0.{ip}", hostname=h if h else None, ready=not (not_ready and i == 0))
           for i, (ip, h) in enumerate(zip(ips, hosts + [None] * len(ips)))]
    return [service(name, "None", **SERVICE), endpoint_slice(name, eps, **SLICE)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["s0", "s1", "s2", "s3"]), _SERVICE_STATE), min_size=1, max_size=8),
       st.booleans(), st.booleans())
def test_a_zone_updated_change_by_change_answers_as_one_built_from_nothing(steps, told, small):
    """`told`: the builder is handed each step's change set (as the DNS daemon's store does);
    otherwise it compares every object itself. `small`: the layers fold and the version stamps
    of names long gone are pruned after a few changes, as they do after many in a big zone."""
    with patch.object(Layered, "TOP", 2 if small else Layered.TOP), \
            patch.object(Layered, "MID", 4 if small else Layered.MID), \
            patch.object(ZoneBuilder, "PRUNE_SLACK", 0 if small else ZoneBuilder.PRUNE_SLACK):
        _update_step_by_step(steps, told)


def _update_step_by_step(steps, told) -> None:
    builder = ZoneBuilder()
    cluster = parse_objects([])
    names = set()
    for name, state in steps:
        changes = replace_service(cluster, name, _objects(name, state))
        zone = builder.update(cluster, changes if told else None)
        names |= {f"{n}.ns.svc.cluster.local" for n in ("s0", "s1", "s2", "s3")}
        names |= {f"{h}.{n}.ns.svc.cluster.local" for n in ("s0", "s1", "s2", "s3") for h in ("a", "b", "10-244-0-1")}
        names |= {f"_http._tcp.{n}.ns.svc.cluster.local" for n in ("s0", "s1")} | {"_tcp.s0.ns.svc.cluster.local"}
        incremental, scratch = Responder(zone), Responder(build_zone(cluster))
        for query in sorted(names):
            for rdtype in ("A", "SRV"):
                assert _answers(incremental, query, rdtype) == _answers(scratch, query, rdtype), (query, rdtype)
        assert _answers(incremental, "1.0.244.10.in-addr.arpa", "PTR") == _answers(scratch, "1.0.244.10.in-addr.arpa", "PTR")

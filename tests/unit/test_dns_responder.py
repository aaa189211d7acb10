"""The DNS responder as a pure function of its zone: bytes in, bytes out (no socket). The
server over real UDP and TCP sockets, and its zone following the API, are tests/api/test_dns.py."""

from __future__ import annotations

import struct

import dns.message
import dns.name
import dns.rcode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyproxy.dns.server import Responder
from pyproxy.dns.zone import build_zone
from pyproxy.model import parse_objects
from tests.factories import endpoint, endpoint_slice, service

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


def test_a_rebuilt_zone_reuses_the_answers_of_unchanged_names():
    from pyproxy.dns.server import warm

    old = build_zone(parse_objects(CLUSTER))
    query = dns.message.make_query("web.ns.svc.cluster.local", "A").to_wire()
    Responder(old).respond(query)  # renders and caches web's answer
    changed = [o for o in CLUSTER if o["metadata"]["name"] != "plain"]  # another service went away
    new = build_zone(parse_objects(changed))
    warm(new, old, render=False)
    key = (dns.name.from_text("web.ns.svc.cluster.local").to_wire(), 1, False)
    assert new.wire_cache[key] is old.wire_cache[key]
    assert dns.message.from_wire(Responder(new).respond(query)).answer[0][0].to_text() == "10.96.0.10"

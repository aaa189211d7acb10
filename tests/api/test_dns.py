"""The DNS responder with real clients (dig and dnspython) over loopback UDP and TCP, and with
hostile packets straight into the sans-io responder (property-based)."""

from __future__ import annotations

import socket
import struct
import subprocess

import dns.flags
import dns.name
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from pyproxy.dns.server import DnsServer, Responder
from pyproxy.dns.zone import build_zone
from pyproxy.model import parse_objects
from tests.factories import endpoint, endpoint_slice, service
from tests.unit.test_dns_responder import CLUSTER, SERVICE, SLICE


@pytest.fixture(scope="module")
def server():
    responder = Responder(build_zone(parse_objects(CLUSTER)))
    dns_server = DnsServer(responder, "127.0.0.1", 0).start()
    yield responder, dns_server.port
    dns_server.stop()


def ask(port, name, rdtype="A", tcp=False, **kw):
    q = dns.message.make_query(name, rdtype, **kw)
    return (dns.query.tcp if tcp else dns.query.udp)(q, "127.0.0.1", port=port, timeout=2)


def dig(port, *args):
    return subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=2", *args],
                          capture_output=True, text=True).stdout


def answers(msg):
    return sorted(rd.to_text() for rr in msg.answer for rd in rr)


def test_cluster_ip_service_and_headless_endpoints(server):
    _, port = server
    assert answers(ask(port, "web.ns.svc.cluster.local")) == ["10.96.0.10"]
    r = ask(port, "db.ns.svc.cluster.local")
    assert answers(r) == ["10.244.1.5", "10.244.1.6"], "ready endpoints only (not-ready and terminating left out)"
    assert r.flags & dns.flags.AA and not r.flags & dns.flags.RA
    assert answers(ask(port, "db-1.db.ns.svc.cluster.local")) == ["10.244.1.6"], "StatefulSet hostnames"
    assert answers(ask(port, "10-244-2-9.plain.ns.svc.cluster.local")) == ["10.244.2.9"], "dashed-IP names"
    assert answers(ask(port, "notready.ns.svc.cluster.local")) == ["10.244.3.3"], "publishNotReadyAddresses"
    assert answers(ask(port, "v6.ns.svc.cluster.local", "AAAA")) == ["fd00::5"]


def test_srv_records_with_targets_in_additional(server):
    _, port = server
    r = ask(port, "_http._tcp.db.ns.svc.cluster.local", "SRV")
    assert answers(r) == ["0 50 8080 db-0.db.ns.svc.cluster.local.", "0 50 8080 db-1.db.ns.svc.cluster.local."]
    assert sorted(rd.to_text() for rr in r.additional for rd in rr) == ["10.244.1.5", "10.244.1.6"]
    r = ask(port, "_http._tcp.web.ns.svc.cluster.local", "SRV")
    assert answers(r) == ["0 100 80 web.ns.svc.cluster.local."]


def test_ptr_cname_and_version(server):
    _, port = server
    assert answers(ask(port, "5.1.244.10.in-addr.arpa", "PTR")) == ["db-0.db.ns.svc.cluster.local."]
    assert answers(ask(port, "10.0.96.10.in-addr.arpa", "PTR")) == ["web.ns.svc.cluster.local."]
    assert answers(ask(port, "ext.ns.svc.cluster.local")) == ["example.org."]
    assert answers(ask(port, "dns-version.cluster.local", "TXT")) == ['"1.1.0"']


def test_negative_answers(server):
    _, port = server
    r = ask(port, "nothing.ns.svc.cluster.local")
    assert r.rcode() == dns.rcode.NXDOMAIN and r.authority[0].rdtype == dns.rdatatype.SOA
    r = ask(port, "empty.ns.svc.cluster.local")
    assert r.rcode() == dns.rcode.NXDOMAIN, "a headless service without ready endpoints"
    r = ask(port, "web.ns.svc.cluster.local", "AAAA")
    assert (r.rcode(), r.answer) == (dns.rcode.NOERROR, []) and r.authority[0].rdtype == dns.rdatatype.SOA, "NODATA"
    assert ask(port, "ns.svc.cluster.local").rcode() == dns.rcode.NOERROR, "an empty non-terminal exists"
    assert ask(port, "example.com").rcode() == dns.rcode.REFUSED, "never a recursive or open resolver"


def test_case_is_preserved_and_edns_echoed(server):
    _, port = server
    r = ask(port, "WeB.Ns.SVC.cluster.LOCAL", use_edns=0)
    assert r.question[0].name.to_text() == "WeB.Ns.SVC.cluster.LOCAL." and answers(r) == ["10.96.0.10"]
    assert r.edns == 0
    out = dig(port, "+edns=1", "+noednsnegotiation", "web.ns.svc.cluster.local")
    assert "BADVERS" in out


def test_large_answers_truncate_over_udp_and_complete_over_tcp(server):
    _, port = server
    r = ask(port, "big.ns.svc.cluster.local")
    # as CoreDNS does: the records that fit in 512 bytes, TC set
    assert r.flags & dns.flags.TC and 0 < len(answers(r)) < 200 and len(r.to_wire()) <= 512
    assert len(answers(ask(port, "big.ns.svc.cluster.local", tcp=True))) == 200
    out = dig(port, "big.ns.svc.cluster.local")  # dig retries over TCP by itself
    assert out.count("IN\tA\t10.245.") == 200


def test_the_server_survives_garbage(server):
    _, port = server
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for junk in (b"", b"\x00", b"\xff" * 700, struct.pack("!HHHHHH", 1, 0, 65535, 65535, 65535, 65535)):
            s.sendto(junk, ("127.0.0.1", port))
    assert answers(ask(port, "web.ns.svc.cluster.local")) == ["10.96.0.10"]




def _follow(source, responder):
    import threading

    from pyproxy.dns.daemon import follow

    stop = threading.Event()
    thread = threading.Thread(target=follow, args=(source, responder, "cluster.local", 5, stop), daemon=True)
    thread.start()
    return stop, thread


def _wait_answer(port, name, want, timeout=1.0):
    import time

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if answers(ask(port, name)) == want:
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"{name} did not become {want} within {timeout}s")


def test_a_slice_change_is_answered_within_a_second(tmp_path):
    import yaml

    from pyproxy.sources.file import FileSource

    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump_all([service("db", "None", **SERVICE),
                                        endpoint_slice("db", ["10.244.1.5"], **SLICE)]))
    responder = Responder()
    server = DnsServer(responder, "127.0.0.1", 0).start()
    stop, thread = _follow(FileSource(str(path), poll=0.05), responder)
    try:
        _wait_answer(server.port, "db.ns.svc.cluster.local", ["10.244.1.5"], 3)
        path.write_text(yaml.safe_dump_all([service("db", "None", **SERVICE),
                                            endpoint_slice("db", ["10.244.1.9"], **SLICE)]))
        _wait_answer(server.port, "db.ns.svc.cluster.local", ["10.244.1.9"], 1.0)
    finally:
        stop.set()
        thread.join(3)
        server.stop()


def test_served_from_the_kubernetes_api_including_headless_services(tmp_path):
    """The API source through tests/apiserver.py (a stand-in kube-apiserver, none can run here)."""
    from pyproxy.sources.kube import KubeClient, KubeSource
    from tests.apiserver import FakeApiServer

    api = FakeApiServer()
    api.apply(service("db", "None", labels={"service.kubernetes.io/headless": ""}, api_version=True, **SERVICE))
    api.apply(endpoint_slice("db", [endpoint("10.244.1.5", hostname="db-0")], api_version=True, **SLICE))
    responder = Responder()
    server = DnsServer(responder, "127.0.0.1", 0).start()
    source = KubeSource(KubeClient(api.kubeconfig(str(tmp_path / "kc"))), "", label_selector="", watch_timeout=5)
    stop, thread = _follow(source, responder)
    try:
        _wait_answer(server.port, "db-0.db.ns.svc.cluster.local", ["10.244.1.5"], 5)
        api.apply(endpoint_slice("db", [endpoint("10.244.1.6", hostname="db-0")], api_version=True, **SLICE))
        _wait_answer(server.port, "db-0.db.ns.svc.cluster.local", ["10.244.1.6"], 1.0)
    finally:
        stop.set()
        thread.join(3)
        server.stop()
        api.stop()



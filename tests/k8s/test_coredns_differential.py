"""pyproxy's DNS responder against upstream's CoreDNS (its `kubernetes` plugin), both following
the same kube-apiserver: a corpus of queries gets the same answers from both, apart from the
differences listed in DIFFERENCES (and in the README)."""

from __future__ import annotations

import socket

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

from pyproxy import netns
from pyproxy.lab import Lab
from pyproxy.lab.proxies import deploy_pyproxy, start_coredns, start_pyproxy_dns
from pyproxy.lab.spec import parse_spec

from .helpers import eventually, service

SPEC = {"name": "t-dns", "controlPlane": "kubernetes",
        "nodes": [{"name": "n1", "podCIDR": "10.244.1.0/24"}],
        "pods": [{"name": "web-1", "node": "n1", "labels": {"app": "web"}},
                 {"name": "web-2", "node": "n1", "labels": {"app": "web"}}]}
COREDNS, PYPROXY = 1053, 2053
Z = "cluster.local"


def objects() -> list[dict]:
    many = [{"addresses": [f"10.244.9.{i}"], "conditions": {"ready": True}} for i in range(1, 61)]
    stateful = [{"addresses": [f"10.244.8.{i}"], "hostname": f"db-{i}", "conditions": {"ready": True}} for i in range(3)]
    return [
        service("web", "web", "10.96.0.10", ports=[{"name": "http", "port": 80, "targetPort": 80}]),
        service("headless", "web", "None", ports=[{"name": "http", "port": 80, "targetPort": 80}]),
        service("db", "none", "None", ports=[{"name": "sql", "port": 5432, "targetPort": 5432}]) | {"spec": {
            "clusterIP": "None", "ports": [{"name": "sql", "port": 5432, "targetPort": 5432}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
         "metadata": {"namespace": "default", "name": "db-1", "labels": {"kubernetes.io/service-name": "db"}},
         "endpoints": stateful, "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}]},
        service("big", "none", "None") | {"spec": {"clusterIP": "None", "ports": [{"port": 80}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
         "metadata": {"namespace": "default", "name": "big-1", "labels": {"kubernetes.io/service-name": "big"}},
         "endpoints": many, "ports": [{"name": "", "port": 80, "protocol": "TCP"}]},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": "ext"},
         "spec": {"type": "ExternalName", "externalName": "example.org"}},
    ]


def queries(lab) -> list[tuple[str, str, dict]]:
    web1 = lab.pods["web-1"].ip
    return [
        (f"web.default.svc.{Z}", "A", {}), (f"web.default.svc.{Z}", "AAAA", {}),
        (f"headless.default.svc.{Z}", "A", {}), (f"db.default.svc.{Z}", "A", {}),
        (f"db-1.db.default.svc.{Z}", "A", {}), (f"db-9.db.default.svc.{Z}", "A", {}),
        (f"_http._tcp.web.default.svc.{Z}", "SRV", {}), (f"_sql._tcp.db.default.svc.{Z}", "SRV", {}),
        (f"_http._tcp.headless.default.svc.{Z}", "SRV", {}),
        (dns.reversename.from_address("10.96.0.10").to_text(), "PTR", {}),
        (f"ext.default.svc.{Z}", "CNAME", {}),
        (f"nope.default.svc.{Z}", "A", {}), (f"WeB.DeFaUlT.sVc.{Z}", "A", {}),
        (f"web.default.svc.{Z}", "A", {"edns": 0, "payload": 1232}),
        (f"big.default.svc.{Z}", "A", {}), (f"big.default.svc.{Z}", "A", {"edns": 0, "payload": 4096}),
        (f"{web1.replace('.', '-')}.headless.default.svc.{Z}", "A", {}),
    ]


# (query name, type) -> why the two answer differently, for what the README lists
DIFFERENCES: dict[tuple[str, str], str] = {}


def ask(ns: str, port: int, name: str, rdtype: str, options: dict) -> dns.message.Message:
    if "edns" in options:
        query = dns.message.make_query(name, rdtype, use_edns=options["edns"], payload=options["payload"])
    else:
        query = dns.message.make_query(name, rdtype, use_edns=False)
    with netns.entered(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(2)
        sock.sendto(query.to_wire(), ("127.0.0.1", port))
        return dns.message.from_wire(sock.recv(65535))


def summary(msg: dns.message.Message) -> dict:
    """What a client acts on: rcode, flags, the answer RRsets (TTL aside), the kinds of records in
    authority (SOA for a negative answer) and whether OPT came back."""
    return {
        "rcode": dns.rcode.to_text(msg.rcode()),
        "flags": sorted(f for f in ("AA", "TC", "RD") if msg.flags & getattr(dns.flags, f)),
        "answer": sorted((r.name.to_text(), dns.rdatatype.to_text(r.rdtype), sorted(x.to_text() for x in r))
                         for r in msg.answer),
        "authority": sorted(dns.rdatatype.to_text(r.rdtype) for r in msg.authority),
        "edns": msg.edns,
    }


@pytest.fixture(scope="module")
def lab():
    lab = Lab(parse_spec(SPEC)).up(replace=True)
    try:
        kube, _ = deploy_pyproxy(lab)
        for obj in objects():
            lab.cp.api.apply(obj)
        ns = lab.add_shadow("dns")
        start_coredns(lab, ns, COREDNS)
        start_pyproxy_dns(lab, ns, kube, PYPROXY)
        lab.dns_ns = ns
        yield lab
    finally:
        lab.down()


def test_the_same_answers_as_coredns(lab):
    ns = lab.dns_ns
    def ready(port: int) -> bool:
        try:
            return bool(ask(ns, port, f"db-1.db.default.svc.{Z}", "A", {}).answer)
        except OSError:
            return False
    for port in (COREDNS, PYPROXY):  # both listen and have listed the API
        eventually(lambda: ready(port), 20, 0.3)
    differences = []
    for name, rdtype, options in queries(lab):
        theirs = summary(ask(ns, COREDNS, name, rdtype, options))
        ours = summary(ask(ns, PYPROXY, name, rdtype, options))
        if theirs != ours and (name, rdtype) not in DIFFERENCES:
            differences.append(f"{name} {rdtype} {options}:\n  coredns {theirs}\n  pyproxy {ours}")
    assert not differences, "\n".join(differences)

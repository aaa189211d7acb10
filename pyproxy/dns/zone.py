"""The cluster zone (Kubernetes DNS-Based Service Discovery 1.1.0, CoreDNS's behaviour), as
precomputed answers.

Invariant: pure. `build_zone(cluster)` returns a Zone whose every (name, type) answer is already
a wire-format response; the server only copies the query's ID, flags and question bytes in (the
question name keeps the client's letter case, and compression pointers into it stay valid since
only the case differs).

Records:
* `<svc>.<ns>.svc.<zone>` A/AAAA: the cluster IP, or for a headless service every ready endpoint
  address (all of them with publishNotReadyAddresses; terminating endpoints never);
* `<host>.<svc>.<ns>.svc.<zone>`: each headless endpoint, by its hostname or its dashed IP;
* `_<port>._<proto>.<svc>.<ns>.svc.<zone>` SRV for named ports (priority 0, weight
  floor(100/N) at least 1), targets' addresses in the additional section;
* PTR for endpoint and cluster IPs; ExternalName as CNAME; `dns-version.<zone>` TXT "1.1.0".
Negative answers: NXDOMAIN for unknown names (and a headless service without ready endpoints),
NODATA when the name exists with other types, both with the zone SOA in the authority section.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ..model.cluster import Cluster
from ..model.types import Service

SCHEMA_VERSION = "1.1.0"


@dataclass
class Entry:
    """What one (name, type) answers: a complete response, minus ID, flags and EDNS."""

    rcode: int
    answer: list[dns.rrset.RRset] = field(default_factory=list)
    authority: list[dns.rrset.RRset] = field(default_factory=list)
    additional: list[dns.rrset.RRset] = field(default_factory=list)


class BoundedCache(OrderedDict):
    """A dict that forgets its oldest entry once it holds `limit` (insertion order): memory stays
    bounded whatever names clients ask for. An OrderedDict: a plain dict finds its oldest key by
    scanning past the slots of every key deleted since its last resize (7x slower per insert)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key, value) -> None:
        if len(self) >= self.limit and key not in self:
            self.popitem(last=False)
        super().__setitem__(key, value)


NEGATIVE_CACHE_ENTRIES = 4096  # answers for names that do not exist: random names land here


@dataclass
class Zone:
    origin: dns.name.Name
    ttl: int
    records: dict[dns.name.Name, dict[int, list[str]]]  # name -> type -> rdata texts
    additional: dict[dns.name.Name, list[dns.name.Name]]  # SRV owner -> its targets
    soa: dns.rrset.RRset
    # Answers by (name, type), and by (lowercased question name in wire form, type, EDNS) ->
    # (rcode, response wire) for the server's hot path; filled on first use, a new zone starts
    # empty. Names in the zone have room for every type asked of them (bounded by the zone's
    # size); names that are not go to small caches of their own, so a flood of random names
    # neither grows memory nor pushes real answers out.
    _cache: dict = field(init=False)
    wire_cache: dict = field(init=False)
    _negative: BoundedCache = field(init=False)
    negative_wire: BoundedCache = field(init=False)
    # every in-zone name with a record below it (empty non-terminals among them): a name that
    # does not exist is told from an empty non-terminal with one lookup, not a scan of the zone
    _interior: set[dns.name.Name] = field(init=False)

    def __post_init__(self) -> None:
        room = 8 * (len(self.records) + 1024)
        self._cache, self.wire_cache = BoundedCache(room), BoundedCache(2 * room)
        self._negative, self.negative_wire = BoundedCache(NEGATIVE_CACHE_ENTRIES), BoundedCache(NEGATIVE_CACHE_ENTRIES)
        self._interior = set()
        for name in self.records:
            if name.is_subdomain(self.origin):
                while name != self.origin:
                    name = name.parent()
                    self._interior.add(name)

    def wire_cache_for(self, qname_wire: bytes) -> dict:
        """Where the answer for this lowercased wire name is kept."""
        return self.wire_cache if self.records.get(_name_of(qname_wire)) is not None else self.negative_wire

    def lookup(self, name: dns.name.Name, rdtype: int) -> Entry | None:
        """The answer for a lowercased name, or None when we are not authoritative for it."""
        key = (name, rdtype)
        cache = self._cache if name in self.records else self._negative
        entry = cache.get(key)
        if entry is None:
            entry = self._answer(name, rdtype)
            if entry is None:
                return None
            cache[key] = entry
        return entry

    def _rrset(self, name: dns.name.Name, rdtype: int) -> dns.rrset.RRset | None:
        texts = self.records.get(name, {}).get(rdtype)
        if not texts:
            return None
        return dns.rrset.from_text_list(name, self.ttl, dns.rdataclass.IN, rdtype, texts)

    def _answer(self, name: dns.name.Name, rdtype: int) -> Entry | None:
        in_zone = name.is_subdomain(self.origin)
        if not in_zone and name not in self.records:
            return None
        types = self.records.get(name)
        if types is None:
            exists = in_zone and name in self._interior  # an empty non-terminal
            return Entry(dns.rcode.NOERROR if exists else dns.rcode.NXDOMAIN, authority=[self.soa])
        answer = []
        if rdtype == dns.rdatatype.ANY:
            answer = [rr for t in sorted(types) if (rr := self._rrset(name, t))]
        elif rdtype in types:
            answer = [self._rrset(name, rdtype)]
        elif dns.rdatatype.CNAME in types:  # ExternalName: the alias answers every type
            answer = [self._rrset(name, dns.rdatatype.CNAME)]
        if not answer:
            return Entry(dns.rcode.NOERROR, authority=[self.soa])
        additional = []
        if rdtype in (dns.rdatatype.SRV, dns.rdatatype.ANY):
            for target in self.additional.get(name, []):
                for t in (dns.rdatatype.A, dns.rdatatype.AAAA):
                    if rr := self._rrset(target, t):
                        additional.append(rr)
        return Entry(dns.rcode.NOERROR, answer=answer, additional=additional)


def _name_of(qname_wire: bytes) -> dns.name.Name | None:
    labels, pos = [], 0
    while pos < len(qname_wire) and qname_wire[pos]:
        labels.append(qname_wire[pos + 1: pos + 1 + qname_wire[pos]])
        pos += 1 + qname_wire[pos]
    try:
        return dns.name.Name(labels + [b""])
    except dns.name.NameTooLong:
        return None


def dashed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return str(ip).replace(".", "-").replace(":", "-")


def _add(records: dict, name: dns.name.Name, rdtype: int, text: str) -> None:
    texts = records.setdefault(name, {}).setdefault(rdtype, [])
    if text not in texts:
        texts.append(text)


def build_zone(cluster: Cluster, zone: str = "cluster.local", ttl: int = 5) -> Zone:
    origin = dns.name.from_text(zone)
    records: dict[dns.name.Name, dict[int, list[str]]] = {}
    additional: dict[dns.name.Name, list[dns.name.Name]] = {}
    slices = cluster.slices_by_service()
    for svc in cluster.services.values():
        _service_records(svc, slices.get(svc.key, []), origin, records, additional)
    version = dns.name.from_text("dns-version", origin)
    _add(records, version, dns.rdatatype.TXT, f'"{SCHEMA_VERSION}"')
    soa = dns.rrset.from_text(origin, ttl, "IN", "SOA",
                              f"ns.dns.{zone}. hostmaster.{zone}. 1 7200 1800 86400 {ttl}")
    records.setdefault(origin, {})[dns.rdatatype.SOA] = [soa[0].to_text()]
    return Zone(origin, ttl, records, additional, soa)


def _service_records(svc: Service, slices: list, origin: dns.name.Name, records: dict, additional: dict) -> None:
    base = dns.name.from_text(f"{svc.name}.{svc.namespace}.svc", origin)
    if svc.type == "ExternalName":
        if svc.external_name:
            _add(records, base, dns.rdatatype.CNAME, svc.external_name.rstrip(".") + ".")
        return
    if not svc.headless:
        for ip in svc.cluster_ips:
            _add(records, base, dns.rdatatype.A if ip.version == 4 else dns.rdatatype.AAAA, str(ip))
            _add(records, dns.name.from_text(ipaddress.ip_address(ip).reverse_pointer + "."), dns.rdatatype.PTR,
                 base.to_text())
        for port in svc.ports:
            if port.name:
                owner = dns.name.from_text(f"_{port.name}._{port.protocol.lower()}", base)
                _add(records, owner, dns.rdatatype.SRV, f"0 100 {port.port} {base.to_text()}")
                additional.setdefault(owner, []).append(base)
        return
    # Headless: the endpoints themselves.
    endpoints = []  # (name, ip, endpoint ports)
    for s in slices:
        for ep in s.endpoints:
            if ep.terminating or not (ep.ready or svc.publish_not_ready_addresses):
                continue
            for ip in ep.addresses:
                host = dns.name.from_text(ep.hostname or dashed(ip), base)
                endpoints.append((host, ip, s.ports))
    for host, ip, _ in endpoints:
        rdtype = dns.rdatatype.A if ip.version == 4 else dns.rdatatype.AAAA
        _add(records, base, rdtype, str(ip))
        _add(records, host, rdtype, str(ip))
        _add(records, dns.name.from_text(ip.reverse_pointer + "."), dns.rdatatype.PTR, host.to_text())
    named: dict[tuple[str, str], list[tuple[dns.name.Name, int]]] = {}
    for host, _, ports in endpoints:
        for p in ports:
            if p.name:
                named.setdefault((p.name, p.protocol.lower()), []).append((host, p.port))
    for (port_name, proto), targets in named.items():
        owner = dns.name.from_text(f"_{port_name}._{proto}", base)
        weight = max(1, 100 // len(targets))
        for host, port in targets:
            _add(records, owner, dns.rdatatype.SRV, f"0 {weight} {port} {host.to_text()}")
            if host not in additional.setdefault(owner, []):
                additional[owner].append(host)


def render_entry(entry: Entry, qname: dns.name.Name, rdtype: int, edns: bool, payload: int = 1232) -> bytes:
    """The response for a lowercased question, ID 0 and the flags the server will fix up."""
    return _message(entry.rcode, qname, rdtype, entry.answer, entry.authority, entry.additional, edns, payload)


def render_truncated(entry: Entry, qname: dns.name.Name, rdtype: int, edns: bool, limit: int,
                     payload: int = 1232) -> bytes:
    """The response cut to fit `limit` bytes: as many whole answer records as fit, nothing in the
    other sections, TC set. What CoreDNS sends (miekg/dns Truncate): a client that does not retry
    over TCP still gets addresses."""
    records = [(rrset, rdata) for rrset in entry.answer for rdata in rrset]

    def build(count: int) -> bytes:
        answer: list[dns.rrset.RRset] = []
        for rrset, rdata in records[:count]:
            if not answer or answer[-1].name != rrset.name or answer[-1].rdtype != rrset.rdtype:
                answer.append(dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype))
                answer[-1].update_ttl(rrset.ttl)
            answer[-1].add(rdata)
        return _message(entry.rcode, qname, rdtype, answer, [], [], edns, payload, dns.flags.TC)

    low, high, best = 0, len(records), build(0)
    while low < high:  # the most records that fit
        middle = (low + high + 1) // 2
        wire = build(middle)
        if len(wire) <= limit:
            low, best = middle, wire
        else:
            high = middle - 1
    return best


def _message(rcode: int, qname: dns.name.Name, rdtype: int, answer, authority, additional, edns: bool,
             payload: int, extra_flags: int = 0) -> bytes:
    msg = dns.message.Message(id=0)
    msg.flags = dns.flags.QR | dns.flags.AA | extra_flags
    msg.set_rcode(rcode)
    msg.question = [dns.rrset.RRset(qname, dns.rdataclass.IN, rdtype)]
    msg.answer = list(answer)
    msg.authority = list(authority)
    msg.additional = list(additional)
    if edns:
        msg.use_edns(0, payload=payload)
    return msg.to_wire(max_size=65535)

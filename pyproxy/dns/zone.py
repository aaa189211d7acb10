"""The cluster zone (Kubernetes DNS-Based Service Discovery 1.1.0, CoreDNS's behaviour), as
precomputed answers.

Invariant: pure. A ZoneBuilder turns a cluster into a Zone, and each later state into the next
version, rebuilding only the services that changed (`build_zone(cluster)` builds one from
nothing). A Zone answers each (name, type) with a wire-format response rendered once; the server
only copies the query's ID, flags and question bytes in (the question name keeps the client's
letter case, and compression pointers into it stay valid since only the case differs).

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

from ..layered import Layered
from ..model.cluster import Cluster
from ..model.types import EndpointSlice, Service

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
    """One version of the zone. Built by a ZoneBuilder, which shares with the next version
    everything a change did not touch, the answer caches included: each cached answer carries the
    version it was rendered at, and is used only while its name has not changed since."""

    origin: dns.name.Name
    ttl: int
    # Every name is a key in its lowercased wire form: bytes keep their hash, a dns.name.Name
    # computes it again on every lookup (most of a zone build's time, measured).
    records: Layered  # name -> type -> rdata texts
    additional: Layered  # SRV owner -> its targets
    soa: dns.rrset.RRset
    # every in-zone name with a record below it (empty non-terminals among them) -> how many: a
    # name that does not exist is told from an empty non-terminal with one lookup
    interior: Layered
    # lowercased wire name -> the version it last changed at; a name not in it has not changed
    # since `floor` (names that no longer exist are dropped now and then, or it would only grow)
    touched: Layered
    version: int
    floor: int
    # (lowercased question name in wire form, type, EDNS) -> (rcode, response wire, version) for
    # the server's hot path. Names in the zone have room for every type asked of them (bounded
    # by the zone's size); names that are not go to a small cache of their own, so a flood of
    # random names neither grows memory nor pushes real answers out.
    wire_cache: "BoundedCache"
    negative_wire: "BoundedCache"
    _cache: dict = field(init=False)  # Entries of this version, by (name, type)
    _negative: "BoundedCache" = field(init=False)
    _origin_wire: bytes = field(init=False)

    def __post_init__(self) -> None:
        self._cache, self._negative = BoundedCache(self.wire_cache.limit // 2), BoundedCache(NEGATIVE_CACHE_ENTRIES)
        self._origin_wire = self.origin.to_wire().lower()

    def wire_cache_for(self, qname_wire: bytes) -> dict:
        """Where the answer for this lowercased wire name is kept."""
        return self.wire_cache if self.records.get(qname_wire) is not None else self.negative_wire

    def fresh(self, cached: tuple | None, qname_wire: bytes) -> tuple | None:
        """A cached (rcode, wire, version), if its name has not changed since it was rendered (nor
        was it rendered by a later version: a query still reading this one sees this one whole)."""
        if cached is None or not self.touched.get(qname_wire, self.floor) <= cached[2] <= self.version:
            return None
        return cached

    def lookup(self, name: bytes, rdtype: int) -> Entry | None:
        """The answer for a lowercased wire name, or None when we are not authoritative for it."""
        key = (name, rdtype)
        cache = self._cache if name in self.records else self._negative
        entry = cache.get(key)
        if entry is None:
            entry = self._answer(name, rdtype)
            if entry is None:
                return None
            cache[key] = entry
        return entry

    def in_zone(self, name: bytes) -> bool:
        """Whether a wire name is the origin or below it (label by label)."""
        pos = 0
        while True:
            if name[pos:] == self._origin_wire:
                return True
            if pos >= len(name) or not name[pos]:
                return False
            pos += name[pos] + 1

    def _rrset(self, name: bytes, rdtype: int) -> dns.rrset.RRset | None:
        texts = self.records.get(name, {}).get(rdtype)
        if not texts:
            return None
        return dns.rrset.from_text_list(name_of(name), self.ttl, dns.rdataclass.IN, rdtype, texts)

    def _answer(self, name: bytes, rdtype: int) -> Entry | None:
        in_zone = self.in_zone(name)
        if not in_zone and name not in self.records:
            return None
        types = self.records.get(name)
        if types is None:
            exists = in_zone and name in self.interior  # an empty non-terminal
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


def name_of(wire: bytes) -> dns.name.Name:
    """A wire name (as the zone keys them) as a dnspython Name."""
    labels, pos = [], 0
    while wire[pos]:
        labels.append(wire[pos + 1: pos + 1 + wire[pos]])
        pos += 1 + wire[pos]
    return dns.name.Name(labels + [b""])


def wire_name(text: str) -> bytes:
    """An absolute name's wire form, lowercased: the zone's keys. Every label here comes from a
    Kubernetes name the model validated (no dots nor escapes inside one)."""
    return b"".join(bytes((len(label),)) + label for label in text.lower().encode().split(b".") if label) + b"\x00"


def dashed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return str(ip).replace(".", "-").replace(":", "-")


def _add(records: dict, name: bytes, rdtype: int, text: str) -> None:
    texts = records.setdefault(name, {}).setdefault(rdtype, [])
    if text not in texts:
        texts.append(text)


@dataclass
class _Part:
    """One service's share of the zone: its records and SRV targets, by wire name."""

    records: dict
    additional: dict


class ZoneBuilder:
    """The zone kept in step with a cluster: `update` rebuilds only the services that changed
    (their Service, or one of their EndpointSlices), and the new Zone shares the rest with the
    previous one. A change costs what it touched, not the size of the zone."""

    PRUNE_SLACK = 2048  # names long gone that `touched` may hold before it is pruned

    def __init__(self, zone: str = "cluster.local", ttl: int = 5) -> None:
        self.origin = dns.name.from_text(zone)
        self.suffix = self.origin.to_text()  # "cluster.local.", what every name of ours ends with
        self.ttl = ttl
        self.soa = dns.rrset.from_text(self.origin, ttl, "IN", "SOA",
                                       f"ns.dns.{zone}. hostmaster.{zone}. 1 7200 1800 86400 {ttl}")
        self.zone: Zone | None = None
        self._parts: dict[str, _Part] = {}  # service key -> its part ("" : the zone's own records)
        self._owners: dict[bytes, set[str]] = {}  # name -> the parts that hold records or targets at it
        self._services: dict[str, Service] = {}
        self._slices: dict[str, EndpointSlice] = {}
        self._slice_keys: dict[str, set[str]] = {}  # service key -> its slices' keys
        self._cache, self._negative = BoundedCache(2048), BoundedCache(NEGATIVE_CACHE_ENTRIES)

    def update(self, cluster: Cluster, changes: dict[str, set[str]] | None = None) -> Zone:
        """The next version for `cluster`. `changes` (kind -> keys changed since the last update,
        a Store Follower's take) spares comparing every object; without it they are compared."""
        if changes is None or self.zone is None:
            changes = self._changes_of(cluster)
        changed = self._changed_by(cluster, changes)
        if self.zone is None:
            own: dict = {}
            _add(own, wire_name("dns-version." + self.suffix), dns.rdatatype.TXT, f'"{SCHEMA_VERSION}"')
            own.setdefault(wire_name(self.suffix), {})[dns.rdatatype.SOA] = [self.soa[0].to_text()]
            self._parts[""] = _Part(own, {})
            touched_names = set(own)
            self._own(own, "")
            base = Zone(self.origin, self.ttl, Layered(), Layered(), self.soa, Layered(), Layered(), 0, 0,
                        self._cache, self._negative)
        else:
            base, touched_names = self.zone, set()
        for key in changed:
            old = self._parts.pop(key, None)
            svc = cluster.services.get(key)
            if old is not None:
                touched_names |= set(old.records) | set(old.additional)
                self._disown(old, key)
            if svc is None:
                continue
            slices = tuple(cluster.slices[k] for k in sorted(self._slice_keys.get(key, ())))
            records: dict = {}
            additional: dict = {}
            _service_records(svc, list(slices), self.suffix, records, additional)
            self._parts[key] = _Part(records, additional)
            touched_names |= set(records) | set(additional)
            self._own(records, key)
            self._own(additional, key)
        return self._publish(base, touched_names)

    def _changes_of(self, cluster: Cluster) -> dict[str, set[str]]:
        """The change set since the last update, found by comparing every object with it (the
        store keeps an unchanged object's instance)."""
        services = {k for k, svc in cluster.services.items() if self._services.get(k) is not svc}
        slices = {k for k, s in cluster.slices.items() if self._slices.get(k) is not s}
        return {"Service": services | (self._services.keys() - cluster.services.keys()),
                "EndpointSlice": slices | (self._slices.keys() - cluster.slices.keys())}

    def _changed_by(self, cluster: Cluster, changes: dict[str, set[str]]) -> set[str]:
        """Keys of the services a change set can have changed (the Services in it, and the
        services of its EndpointSlices, before and after)."""
        changed = set(changes.get("Service", ()))
        for key in changed:
            self._services.pop(key, None)
            if key in cluster.services:
                self._services[key] = cluster.services[key]
        for key in changes.get("EndpointSlice", ()):
            old, new = self._slices.pop(key, None), cluster.slices.get(key)
            if old is not None:
                changed.add(old.service_key)
                self._slice_keys[old.service_key].discard(key)
            if new is not None:
                changed.add(new.service_key)
                self._slice_keys.setdefault(new.service_key, set()).add(key)
                self._slices[key] = new
        self._drop_empty(changed)
        return changed

    def _drop_empty(self, services: set[str]) -> None:
        for key in services:
            if not self._slice_keys.get(key, True):
                del self._slice_keys[key]

    def _own(self, names: dict, key: str) -> None:
        for name in names:
            self._owners.setdefault(name, set()).add(key)

    def _disown(self, part: _Part, key: str) -> None:
        for name in (*part.records, *part.additional):
            owners = self._owners.get(name)
            if owners is not None:
                owners.discard(key)
                if not owners:
                    del self._owners[name]

    def _publish(self, base: Zone, names: set) -> Zone:
        """The next version: each touched name's records merged again from the parts that hold it."""
        version = base.version + 1
        records, additional, interior, touched = {}, {}, {}, {}
        origin = wire_name(self.suffix)
        for name in names:
            owners = self._owners.get(name, ())
            if len(owners) == 1:  # nearly every name: its one part's records as they are
                part = self._parts[next(iter(owners))]
                merged, targets = part.records.get(name, {}), part.additional.get(name, [])
            else:
                merged, targets = {}, []
                for key in sorted(owners):
                    part = self._parts[key]
                    for rdtype, texts in part.records.get(name, {}).items():
                        into = merged.setdefault(rdtype, [])
                        into += [t for t in texts if t not in into]
                    targets += [t for t in part.additional.get(name, []) if t not in targets]
            was = base.records.get(name) is not None
            records[name] = merged or None
            additional[name] = targets or None
            touched[name] = version
            if bool(merged) != was and name.endswith(origin):
                step = 1 if merged else -1
                parent = name
                while parent != origin and len(parent) > len(origin):
                    parent = parent[parent[0] + 1:]
                    count = ((interior[parent] or 0) if parent in interior else base.interior.get(parent, 0)) + step
                    interior[parent] = count or None
                    if count in (0, 1):  # now an empty non-terminal, or no longer: its answers change
                        touched[parent] = version
        self._cache.limit = 16 * (len(self._owners) + 1024)
        new_records, new_interior = base.records.updated(records), base.interior.updated(interior)
        new_touched, floor = base.touched.updated(touched), base.floor
        if len(new_touched.base) > 2 * (len(new_records.base) + len(new_interior.base)) + self.PRUNE_SLACK:
            # mostly names long gone: keep those that exist; the rest count as changed now
            new_touched = new_touched.pruned(lambda name: name in new_records or name in new_interior)
            floor = version
        self.zone = Zone(self.origin, self.ttl, new_records, base.additional.updated(additional), self.soa,
                         new_interior, new_touched, version, floor, self._cache, self._negative)
        return self.zone


def build_zone(cluster: Cluster, zone: str = "cluster.local", ttl: int = 5) -> Zone:
    """The zone of a cluster, from nothing (a ZoneBuilder keeps it up to date change by change)."""
    return ZoneBuilder(zone, ttl).update(cluster)


def _service_records(svc: Service, slices: list, suffix: str, records: dict, additional: dict) -> None:
    """One service's records (keyed by wire name) and SRV targets; `suffix` is the zone, "cluster.local."."""
    base = f"{svc.name}.{svc.namespace}.svc.{suffix}"
    base_wire = wire_name(base)
    if svc.type == "ExternalName":
        if svc.external_name:
            _add(records, base_wire, dns.rdatatype.CNAME, svc.external_name.rstrip(".") + ".")
        return
    if not svc.headless:
        for ip in svc.cluster_ips:
            _add(records, base_wire, dns.rdatatype.A if ip.version == 4 else dns.rdatatype.AAAA, str(ip))
            _add(records, wire_name(ipaddress.ip_address(ip).reverse_pointer + "."), dns.rdatatype.PTR, base)
        for port in svc.ports:
            if port.name:
                owner = wire_name(f"_{port.name}._{port.protocol.lower()}.{base}")
                _add(records, owner, dns.rdatatype.SRV, f"0 100 {port.port} {base}")
                additional.setdefault(owner, []).append(base_wire)
        return
    # Headless: the endpoints themselves.
    endpoints = []  # (name, its wire form, ip, endpoint ports)
    for s in slices:
        for ep in s.endpoints:
            if ep.terminating or not (ep.ready or svc.publish_not_ready_addresses):
                continue
            for ip in ep.addresses:
                host = f"{ep.hostname or dashed(ip)}.{base}"
                endpoints.append((host, wire_name(host), ip, s.ports))
    for host, host_wire, ip, _ in endpoints:
        rdtype = dns.rdatatype.A if ip.version == 4 else dns.rdatatype.AAAA
        _add(records, base_wire, rdtype, str(ip))
        _add(records, host_wire, rdtype, str(ip))
        _add(records, wire_name(ip.reverse_pointer + "."), dns.rdatatype.PTR, host)
    named: dict[tuple[str, str], list[tuple[str, bytes, int]]] = {}
    for host, host_wire, _, ports in endpoints:
        for p in ports:
            if p.name:
                named.setdefault((p.name, p.protocol.lower()), []).append((host, host_wire, p.port))
    for (port_name, proto), targets in named.items():
        owner = wire_name(f"_{port_name}._{proto}.{base}")
        weight = max(1, 100 // len(targets))
        for host, host_wire, port in targets:
            _add(records, owner, dns.rdatatype.SRV, f"0 {weight} {port} {host}")
            if host_wire not in additional.setdefault(owner, []):
                additional[owner].append(host_wire)


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

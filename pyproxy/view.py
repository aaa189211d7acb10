"""Cluster state -> what THIS node must do (the node view). All Kubernetes service semantics live
here, once, for every backend: which services are proxied, their frontends, and which endpoints
each kind of traffic may reach after traffic policies, topology hints and terminating fallback.

Invariant: pure. No I/O, no clock, no backend knowledge; the same input gives an equal output,
so a backend can compare views to find what changed.

The rules follow kube-proxy's pkg/proxy (CategorizeEndpoints, canUseTopology): a backend that
renders a view faithfully behaves like kube-proxy.
"""

from __future__ import annotations

import bisect
import ipaddress
from socket import inet_ntoa
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

from .config import ProxyConfig
from .layered import Layered
from .model.cluster import Cluster
from .model.types import (
    SERVICE_PROXY_NAME_LABEL,
    ZONE_LABEL,
    EndpointSlice,
    IPAddress,
    IPNetwork,
    Node,
    Service,
    ServicePort,
)


class EndpointView(NamedTuple):
    """One endpoint as this node sees it. A NamedTuple: views are rebuilt for every endpoint of a
    changed service, and tuples build ~5x faster than frozen dataclasses."""

    ip: IPAddress
    port: int
    ready: bool
    serving: bool
    terminating: bool
    local: bool  # on this node
    zone_hints: tuple[str, ...] = ()
    node_hints: tuple[str, ...] = ()
    label: str = ""  # "ip:port" ("[ip]:port" for IPv6), computed once: backends use it a lot
    ip_text: str = ""

    def __str__(self) -> str:
        return self.label


# A frontend's kind: where clients reach the service port.
CLUSTER_IP, EXTERNAL_IP, LOAD_BALANCER_IP, NODE_PORT = "cluster IP", "external IP", "load-balancer IP", "node port"
# Where a frontend sends new connections (its route):
TO_CLUSTER = "cluster endpoints"  # straight to the endpoints for "Cluster" traffic policy
TO_LOCAL = "local endpoints"  # straight to this node's endpoints ("Local" traffic policy)
EXTERNAL = "external path"  # masquerade, or the Local policy's short-circuits, then the external policy's endpoints
FIREWALL = "firewall"  # loadBalancerSourceRanges first (others dropped), then the external path
REJECT, DROP = "reject", "drop"  # the verdicts for connections no usable endpoint can take


class Frontend(NamedTuple):
    """One address and port a service port answers on, and what becomes of its connections: a
    renderer writes each in its own syntax without deciding anything about Kubernetes."""

    kind: str  # CLUSTER_IP, EXTERNAL_IP, LOAD_BALANCER_IP, NODE_PORT
    address: IPAddress | None  # None for a node port: on every node-port address
    port: int
    route: str  # TO_CLUSTER, TO_LOCAL, EXTERNAL or FIREWALL; "" when connections are not sent to endpoints
    verdict: str = ""  # REJECT or DROP for the connections that no usable endpoint can take ("" none)


@dataclass(frozen=True, slots=True)
class ServicePortView:
    namespace: str
    name: str
    port_name: str
    protocol: str  # TCP, UDP, SCTP
    family: int  # 4 or 6
    cluster_ip: IPAddress
    port: int
    node_port: int = 0
    external_ips: tuple[IPAddress, ...] = ()
    load_balancer_ips: tuple[IPAddress, ...] = ()
    load_balancer_source_ranges: tuple[IPNetwork, ...] = ()
    health_check_node_port: int = 0
    external_policy_local: bool = False
    internal_policy_local: bool = False
    affinity_timeout: int = 0  # seconds of ClientIP affinity, 0 for none
    cluster_endpoints: tuple[EndpointView, ...] = ()  # for "Cluster" traffic policy
    local_endpoints: tuple[EndpointView, ...] = ()  # for "Local" traffic policy
    reachable_endpoints: tuple[EndpointView, ...] = ()  # every endpoint a rule may DNAT to
    has_endpoints: bool = False  # usable endpoints exist anywhere in the cluster
    # computed once: every sync looks up every port by key, and a property would rebuild it each time
    name_string: str = field(init=False, compare=False, repr=False)
    key: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # kube-proxy's ServicePortName.String(): "ns/name:port", or "ns/name" for an unnamed port
        name = f"{self.namespace}/{self.name}" + (f":{self.port_name}" if self.port_name else "")
        object.__setattr__(self, "name_string", name)
        object.__setattr__(self, "key", f"{name}/{self.protocol}/ipv{self.family}")

    @property
    def service_key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.external_ips or self.load_balancer_ips)

    @property
    def uses_cluster_endpoints(self) -> bool:
        # Even with externalTrafficPolicy Local the cluster endpoints are needed: pods reaching an
        # external address short-circuit to them (kube-proxy's UsesClusterEndpoints).
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or (self.externally_accessible and self.external_policy_local)

    @property
    def has_internal_endpoints(self) -> bool:
        return self.has_endpoints and (not self.internal_policy_local or bool(self.local_endpoints))

    @property
    def has_external_endpoints(self) -> bool:
        return self.has_endpoints and (not self.external_policy_local or bool(self.local_endpoints))

    # What a backend builds for this port (kube-proxy's proxier decisions, once for every backend):
    @property
    def uses_cluster_chain(self) -> bool:
        """A chain balancing over the cluster endpoints."""
        return bool(self.cluster_endpoints) and self.uses_cluster_endpoints

    @property
    def uses_local_chain(self) -> bool:
        """A chain balancing over this node's endpoints."""
        return bool(self.local_endpoints) and self.uses_local_endpoints

    @property
    def uses_external_chain(self) -> bool:
        """A chain for external destinations (masquerade or Local policy, pod short-circuit);
        needed whenever there are endpoints at all, even none usable from outside."""
        return self.has_endpoints and self.externally_accessible

    @property
    def no_endpoint_verdict(self) -> str:
        """What a frontend without a usable endpoint does: "reject" when the service has none
        anywhere (the client learns at once), "drop" when only a Local policy's endpoints on
        this node are missing (kube-proxy: the client may retry through another node)."""
        return DROP if self.has_endpoints else REJECT

    @property
    def uses_firewall(self) -> bool:
        """loadBalancerSourceRanges filtering on the load-balancer IPs."""
        return self.has_endpoints and bool(self.load_balancer_ips) and bool(self.load_balancer_source_ranges)

    @property
    def internal_route(self) -> str:
        """Which endpoints internal traffic goes to (internalTrafficPolicy)."""
        return TO_LOCAL if self.internal_policy_local else TO_CLUSTER

    @property
    def external_route(self) -> str:
        """Which endpoints the external path ends at (externalTrafficPolicy)."""
        return TO_LOCAL if self.external_policy_local else TO_CLUSTER

    @property
    def internal_verdict(self) -> str:
        """What connections to the cluster IP get when no endpoint can take them ("" when one can)."""
        return "" if self.has_internal_endpoints else self.no_endpoint_verdict

    @property
    def external_verdict(self) -> str:
        """The same for the external frontends (externalTrafficPolicy decides which endpoints count)."""
        return "" if self.has_external_endpoints else self.no_endpoint_verdict

    @property
    def frontends(self) -> tuple[Frontend, ...]:
        """kube-proxy's frontends in its order: the cluster IP, the external IPs, the load-balancer
        IPs, the node port. The cluster IP goes straight to the internal policy's endpoints; the
        others take the external path whenever there are endpoints at all (pods short-circuit to
        the cluster's even when external traffic has none), and get the no-endpoint verdict when
        external traffic has none usable."""
        internal = Frontend(CLUSTER_IP, self.cluster_ip, self.port,
                            self.internal_route if self.has_internal_endpoints else "", self.internal_verdict)
        external = EXTERNAL if self.has_endpoints else ""
        verdict = self.external_verdict
        balancer = FIREWALL if self.uses_firewall else external
        return (internal,
                *(Frontend(EXTERNAL_IP, ip, self.port, external, verdict) for ip in self.external_ips),
                *(Frontend(LOAD_BALANCER_IP, ip, self.port, balancer, verdict) for ip in self.load_balancer_ips),
                *((Frontend(NODE_PORT, None, self.node_port, external, verdict),) if self.node_port else ()))


class ViewChanges(NamedTuple):
    """What differs from the same builder's previous view (sequence `since`). A consumer that last
    saw view `since` applies these instead of comparing every port (at 100,000 services a walk
    costs more than the change); any other consumer compares (see backend.PortMemo)."""

    since: int
    changed: tuple[ServicePortView, ...]  # ports of view `since` whose view is different now
    added: tuple[ServicePortView, ...]
    removed: frozenset[str]  # keys of the ports that went


@dataclass(frozen=True)
class NodeView:
    node_name: str
    node_ips: tuple[IPAddress, ...]
    pod_cidrs: tuple[IPNetwork, ...]
    # service key -> its port views (by port key), and the service keys sorted: the ports' order
    services: Mapping[str, tuple[ServicePortView, ...]]
    service_keys: Sequence[str]
    deleting: bool = False
    # the addresses on this node's interfaces, where nodePortAddresses' CIDRs are matched (as
    # kube-proxy matches them); None where they cannot be read (dump, trace): the Node's and loopback
    interface_ips: tuple[IPAddress, ...] | None = None
    service_ranges: tuple[IPNetwork, ...] = ()  # the ServiceCIDRs' ranges, both families
    sequence: int = field(default=0, compare=False)  # this view's number from its builder
    changes: ViewChanges | None = field(default=None, compare=False)  # None: compare everything

    @cached_property
    def ports(self) -> tuple[ServicePortView, ...]:
        # built when first asked: a partial sync that follows `changes` never walks every port
        return tuple(p for key in self.service_keys for p in self.services[key])

    def service_ranges_of(self, family: int) -> tuple[IPNetwork, ...]:
        return tuple(c for c in self.service_ranges if c.version == family)

    def family(self, family: int) -> tuple[ServicePortView, ...]:
        cache = self.__dict__.setdefault("_families", {})  # a cache of a frozen value's own walk
        if family not in cache:
            cache[family] = tuple(p for p in self.ports if p.family == family)
        return cache[family]

    def node_ips_of(self, family: int) -> tuple[IPAddress, ...]:
        return tuple(ip for ip in self.node_ips if ip.version == family)

    def interface_ips_of(self, family: int) -> tuple[IPAddress, ...]:
        if self.interface_ips is None:
            return self.node_ips_of(family) + (ipaddress.ip_address("127.0.0.1" if family == 4 else "::1"),)
        return tuple(ip for ip in self.interface_ips if ip.version == family)


def source_ranges_admit_node(sp: ServicePortView, node_ips: Iterable[IPAddress]) -> bool:
    """kube-proxy: when a loadBalancerSourceRange holds a node address, the node's own connections
    to the load-balancer IP (which arrive with that IP as their source) pass the firewall too."""
    return any(ip in cidr for cidr in sp.load_balancer_source_ranges for ip in node_ips)


def is_proxied(svc: Service, proxy_name: str = "") -> bool:
    """Headless and ExternalName services get no rules. service.kubernetes.io/service-proxy-name
    splits the rest: the default proxy serves only unlabelled services, a proxy with a name
    (--proxy-name) only those labelled with it."""
    if svc.headless or svc.type == "ExternalName" or not svc.cluster_ips:
        return False
    return svc.label(SERVICE_PROXY_NAME_LABEL) == (proxy_name or None)


def _endpoints(slices: Iterable[EndpointSlice], sp: ServicePort, family: int, node_name: str) -> list[EndpointView]:
    address_type = "IPv4" if family == 4 else "IPv6"
    seen: dict[str, EndpointView] = {}  # by label: a str hashes ~7x faster than (ip, port)
    for s in slices:
        if s.address_type != address_type:
            continue
        port = next((p for p in s.ports if p.name == sp.name and p.protocol == sp.protocol), None)
        if port is None:
            continue
        number = port.port
        for ep in s.endpoints:
            ip = ep.addresses[0]
            # ~3x faster than str(ip) (and `.packed`) for IPv4; a full sync at scale does 100,000
            text = inet_ntoa(ip._ip.to_bytes(4, "big")) if family == 4 else str(ip)
            label = f"[{text}]:{number}" if family == 6 else f"{text}:{number}"
            if label not in seen:
                seen[label] = EndpointView(ip, number, ep.ready, ep.serving, ep.terminating,
                                           bool(node_name) and ep.node_name == node_name, ep.hint_zones,
                                           ep.hint_nodes, label, text)
    return [seen[label] for label in sorted(seen)]  # kube-proxy orders endpoints by "ip:port"


def _can_use_topology(endpoints: list[EndpointView], node_name: str, node: Node | None) -> tuple[str, str] | None:
    """Whether hints narrow the cluster endpoints, and by what: ("node", name) or ("zone", zone).
    As kube-proxy's topologyModeFromHints: the hints alone decide (the EndpointSlice controller
    writes them only for services that ask); node hints need only our name, zone hints the
    Node's zone label."""
    ready = [ep for ep in endpoints if ep.ready]
    if not ready:
        return None
    if all(ep.node_hints for ep in ready) and any(node_name in ep.node_hints for ep in ready):
        return ("node", node_name)
    zone = node.label(ZONE_LABEL) or "" if node else ""
    if not zone or not all(ep.zone_hints for ep in ready):
        return None
    if not any(zone in ep.zone_hints for ep in ready):
        return None
    return ("zone", zone)


def categorize(uses_cluster: bool, uses_local: bool, endpoints: list[EndpointView], node_name: str,
               node: Node | None) -> tuple[tuple[EndpointView, ...], tuple[EndpointView, ...],
                                           tuple[EndpointView, ...], bool]:
    """kube-proxy's CategorizeEndpoints: (cluster, local, reachable endpoints, any usable anywhere)."""
    cluster: list[EndpointView] = []
    local: list[EndpointView] = []
    has_any = False
    if uses_cluster:
        topology = _can_use_topology(endpoints, node_name, node)
        if topology is None:
            cluster = [ep for ep in endpoints if ep.ready]
        else:
            kind, value = topology
            cluster = [ep for ep in endpoints if ep.ready and value in (ep.node_hints if kind == "node" else ep.zone_hints)]
        if not cluster:  # no ready endpoint anywhere: fall back to serving, terminating ones
            cluster = [ep for ep in endpoints if ep.serving and ep.terminating]
        has_any = bool(cluster)
    if uses_local:
        local_ready = [ep for ep in endpoints if ep.local and ep.ready]
        has_any = has_any or any(ep.ready or (ep.serving and ep.terminating) for ep in endpoints)
        local = local_ready or [ep for ep in endpoints if ep.local and ep.serving and ep.terminating]
    if not uses_local:
        reachable = cluster
    elif not uses_cluster:
        reachable = local
    else:
        merged = {ep.label: ep for ep in cluster}
        merged.update((ep.label, ep) for ep in local)
        reachable = sorted(merged.values(), key=lambda e: e.label)
    return tuple(cluster), tuple(local), tuple(reachable), has_any


def service_port_views(svc: Service, slices: Iterable[EndpointSlice], node: Node | None,
                       node_name: str) -> list[ServicePortView]:
    """Every (port, IP family) of one service, with its endpoints categorised for this node."""
    slices = list(slices)
    external_local = svc.external_traffic_policy == "Local"
    internal_local = svc.internal_traffic_policy == "Local"
    out = []
    for cluster_ip in svc.cluster_ips:
        family = cluster_ip.version
        external_ips = tuple(ip for ip in svc.external_ips if ip.version == family)
        lb_ips = tuple(ip for ip in svc.load_balancer_ips if ip.version == family)
        for sp in svc.ports:
            # The same rules as ServicePortView.uses_*_endpoints, needed before the view exists.
            accessible = bool(sp.node_port or external_ips or lb_ips)
            uses_cluster = not internal_local or accessible
            uses_local = internal_local or (accessible and external_local)
            cluster, local, reachable, has_any = categorize(
                uses_cluster, uses_local, _endpoints(slices, sp, family, node_name), node_name, node)
            out.append(ServicePortView(
                namespace=svc.namespace, name=svc.name, port_name=sp.name, protocol=sp.protocol,
                family=family, cluster_ip=cluster_ip, port=sp.port, node_port=sp.node_port,
                external_ips=external_ips, load_balancer_ips=lb_ips,
                load_balancer_source_ranges=tuple(r for r in svc.load_balancer_source_ranges if r.version == family),
                health_check_node_port=svc.health_check_node_port,
                external_policy_local=external_local, internal_policy_local=internal_local,
                affinity_timeout=svc.session_affinity_timeout,
                cluster_endpoints=cluster, local_endpoints=local, reachable_endpoints=reachable,
                has_endpoints=has_any,
            ))
    return out


def node_addresses(node: Node | None, extra: Iterable[IPAddress] = ()) -> tuple[IPAddress, ...]:
    ips = list(node.addresses) if node else []
    for ip in extra:
        if ip not in ips:
            ips.append(ip)
    return tuple(ips)


def build_view(cluster: Cluster, node_name: str, proxy_name: str = "",
               local_addresses: Iterable[IPAddress] = (), primary_ip: str = "") -> NodeView:
    return ViewBuilder(node_name, proxy_name, primary_ip).build(cluster, local_addresses)


class ViewBuilder:
    """build_view, kept up to date: only the services whose Service or EndpointSlices changed are
    computed again, and each view says what differs from the previous one (ViewChanges), so a
    one-endpoint change costs one service's work, not the cluster's.

    What changed is found either from the caller's change set (the Store's keys, `changes`), at
    a cost proportional to the change, or by comparing every object with the last build's by
    identity (sources replace only what changed). A port view equal to the previous one is the
    previous object. Still pure: the result is always what build_view would compute."""

    def __init__(self, node_name: str, proxy_name: str = "", primary_ip: str = "") -> None:
        self.node_name = node_name
        self.proxy_name = proxy_name
        # kube-proxy's bindAddress: this address is the node's primary IP, before the Node's own
        self.primary_ip = (ipaddress.ip_address(primary_ip),) if primary_ip else ()
        self._node: Node | None = None
        self._sequence = 0
        self._reset()

    def _reset(self) -> None:
        self._services: dict[str, Service] = {}  # the Services the views were computed from
        self._views = Layered()  # service key -> its port views (a version per build: views share the rest)
        self._slices: dict[str, EndpointSlice] = {}  # the slices the views were computed from
        self._members: dict[str, set[str]] = {}  # service key -> its slices' keys
        self._groups: dict[str, tuple[EndpointSlice, ...]] = {}  # service key -> slices, by slice key
        self._keys: list[str] = []  # sorted; a new list whenever the key set changes (views share it)
        self._fresh = True  # nothing built since the reset: there is no previous view to differ from

    def _regroup(self, slices: dict[str, EndpointSlice], keys: Iterable[str] | None) -> set[str]:
        """Bring the per-service slice groups up to date with the slices named by `keys` (None:
        all of them, compared); return the services whose group changed."""
        prev = self._slices
        if keys is None:
            keys = [k for k, s in slices.items() if prev.get(k) is not s] + [k for k in prev if k not in slices]
        touched: set[str] = set()
        for key in keys:
            old, new = prev.get(key), slices.get(key)
            if old is new:
                continue
            if old is not None:
                touched.add(old.service_key)
                self._members.get(old.service_key, set()).discard(key)
                del prev[key]
            if new is not None:
                touched.add(new.service_key)
                self._members.setdefault(new.service_key, set()).add(key)
                prev[key] = new
        for service in touched:
            members = self._members.get(service)
            if members:
                self._groups[service] = tuple(prev[k] for k in sorted(members))  # a stable order
            else:
                self._groups.pop(service, None)
                self._members.pop(service, None)
        return touched

    def build(self, cluster: Cluster, local_addresses: Iterable[IPAddress] = (),
              interface_ips: tuple[IPAddress, ...] | None = None,
              changes: Mapping[str, Iterable[str]] | None = None) -> NodeView:
        """`changes`: the keys changed since the previous build, by kind (Follower.take), or
        None to compare everything."""
        node = cluster.nodes.get(self.node_name)
        if node != self._node:  # topology and locality depend on the node: start over
            self._node = node
            self._reset()
        try:
            view = self._build(cluster, node, local_addresses, interface_ips, None if self._fresh else changes)
        except BaseException:
            self._reset()  # half-updated state must not be taken for the last build's
            raise
        self._fresh = False
        return view

    def _build(self, cluster: Cluster, node: Node | None, local_addresses: Iterable[IPAddress],
               interface_ips: tuple[IPAddress, ...] | None, changes: Mapping[str, Iterable[str]] | None) -> NodeView:
        services = cluster.services
        if changes is None:
            touched = self._regroup(cluster.slices, None)
            touched.update(k for k, svc in services.items() if self._services.get(k) is not svc)
            touched.update(k for k in self._services if k not in services)
        else:
            touched = self._regroup(cluster.slices, changes.get("EndpointSlice", ()))
            touched.update(changes.get("Service", ()))
        changed: list[ServicePortView] = []
        added: list[ServicePortView] = []
        removed: set[str] = set()
        appeared: list[str] = []
        gone: list[str] = []
        updates: dict[str, tuple[ServicePortView, ...] | None] = {}
        for key in sorted(touched):
            svc = services.get(key)
            before = {p.key: p for p in self._views.get(key, ())}
            if svc is None:
                if self._services.pop(key, None) is not None:
                    gone.append(key)
                updates[key] = None
                removed.update(before)
                continue
            if key not in self._services:
                appeared.append(key)
            self._services[key] = svc
            views = []
            if is_proxied(svc, self.proxy_name):
                for p in sorted(service_port_views(svc, self._groups.get(key, ()), node, self.node_name),
                                key=lambda p: p.key):
                    old = before.pop(p.key, None)
                    if old is None:
                        added.append(p)
                    elif old != p:
                        changed.append(p)
                    else:
                        p = old  # the same object: consumers that compare by identity skip it
                    views.append(p)
            removed.update(before)
            updates[key] = tuple(views)
        self._views = self._views.updated(updates)
        if appeared or gone:
            self._keys = _moved(self._keys, appeared, gone)
        self._sequence += 1
        view_changes = None if self._fresh else ViewChanges(
            self._sequence - 1, tuple(changed), tuple(added), frozenset(removed))
        node_ips = node_addresses(node, local_addresses)
        if self.primary_ip:
            node_ips = self.primary_ip + tuple(ip for ip in node_ips if ip not in self.primary_ip)
        return NodeView(self.node_name, node_ips, node.pod_cidrs if node else (),
                        self._views, self._keys, deleting=bool(node and node.deleting),
                        interface_ips=interface_ips,
                        service_ranges=cluster.service_ranges(4) + cluster.service_ranges(6),
                        sequence=self._sequence, changes=view_changes)


class PortFollower:
    """A consumer's own index of the ports it cares about (`keep`), by key, kept up to date from
    each view's changes when it saw the view they follow, else by a walk over every port."""

    def __init__(self, keep: Callable[[ServicePortView], bool]) -> None:
        self.keep = keep
        self.ports: dict[str, ServicePortView] | None = None  # None: nothing seen yet (or forgotten)
        self._sequence = -1

    def follow(self, view: NodeView) -> tuple[dict[str, ServicePortView], dict[str, ServicePortView]] | None:
        """The kept ports that differ, (before, after) by key (after the walk: all of them, then
        and now); None the first time."""
        changes, known = view.changes, self.ports
        if known is not None and changes is not None and changes.since == self._sequence:
            after = {sp.key: sp for sp in (*changes.changed, *changes.added) if self.keep(sp)}
            gone = (*(sp.key for sp in changes.changed), *changes.removed)
            before = {key: known.pop(key) for key in gone if key in known}
            known.update(after)
            result = (before, after)
        else:
            self.ports = {sp.key: sp for sp in view.ports if self.keep(sp)}
            result = None if known is None else (known, dict(self.ports))
        self._sequence = view.sequence
        return result

    def forget(self) -> None:
        """Walk again at the next view (what was followed may not have been acted on)."""
        self.ports = None


def _moved(keys: list[str], appeared: list[str], gone: list[str]) -> list[str]:
    """A new sorted key list (views share the old one): a few keys placed by bisection, many by a
    sort."""
    if len(appeared) + len(gone) > 64:
        return sorted(set(keys).union(appeared).difference(gone))
    out = list(keys)
    for key in gone:
        del out[bisect.bisect_left(out, key)]
    for key in appeared:
        bisect.insort(out, key)
    return out


LOOPBACK = {4: ipaddress.ip_network("127.0.0.0/8"), 6: ipaddress.ip_network("::1/128")}
EVERY = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}


def node_port_networks(config: ProxyConfig, family: int) -> list[IPNetwork | str] | None:
    """kube-proxy's NodePortAddresses for one family: its CIDRs (the keywords expanded as
    kube-proxy's expandNodePortAddressKeywords does: `primary` the node's first address of each
    family, `localhost` the loopback CIDRs, `all` the zero CIDRs), or None for every local
    address (MatchAll): nodePortAddresses unset, without an entry of this family, or holding a
    zero CIDR."""
    entries: list[IPNetwork | str] = []
    for e in config.node_port_addresses:
        if e == "primary":
            entries.append(e)
        elif e in ("localhost", "all"):
            entries.append((LOOPBACK if e == "localhost" else EVERY)[family])
        else:
            network = ipaddress.ip_network(e)
            if network.version == family:
                entries.append(network)
    if not entries or any(e != "primary" and e.prefixlen == 0 for e in entries):
        return None
    return entries


def node_port_ips(view: NodeView, config: ProxyConfig, family: int) -> list | None:
    """The addresses NodePorts answer on, or None for every local address (see
    node_port_networks): the node's interface addresses inside those CIDRs, as kube-proxy's
    GetNodeIPs, and `primary` the Node's first address of the family. Loopback only in iptables
    mode with localhostNodePorts (nftables mode never accepts it)."""
    entries = node_port_networks(config, family)
    if entries is None:
        return None
    loopback_ok = family == 4 and config.localhost_node_ports and config.mode == "iptables"
    node_ips = view.node_ips_of(family)
    primary = node_ips[0] if node_ips and not node_ips[0].is_loopback else None
    ips = []
    for ip in view.interface_ips_of(family):
        if ip in ips or (ip.is_loopback and not loopback_ok):
            continue
        if any(ip == primary if e == "primary" else ip in e for e in entries):
            ips.append(ip)
    return ips


class LocalTraffic(NamedTuple):
    """kube-proxy's LocalTrafficDetector as a value: this node's pods send from `cidr`, or arrive
    on `interface` (any interface whose name starts so, with `prefix`). Renderers write the match."""

    cidr: str = ""
    interface: str = ""
    prefix: bool = False


def local_traffic(config: ProxyConfig, view: NodeView, family: int) -> LocalTraffic | None:
    """None when the mode cannot tell (then pod traffic is not special-cased)."""
    mode = config.detect_local_mode
    if mode in ("ClusterCIDR", "NodeCIDR"):
        cidrs = config.cluster_cidrs if mode == "ClusterCIDR" else view.pod_cidrs
        cidr = next((c for c in cidrs if c.version == family), None)
        return LocalTraffic(cidr=str(cidr)) if cidr else None
    if mode == "BridgeInterface":
        return LocalTraffic(interface=config.bridge_interface)
    return LocalTraffic(interface=config.interface_name_prefix, prefix=True)

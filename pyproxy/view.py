"""Cluster state -> what THIS node must do (the node view). All Kubernetes service semantics live
here, once, for every backend: which services are proxied, their frontends, and which endpoints
each kind of traffic may reach after traffic policies, topology hints and terminating fallback.

Invariant: pure. No I/O, no clock, no backend knowledge; the same input gives an equal output,
so a backend can compare views to find what changed.

The rules follow kube-proxy's pkg/proxy (CategorizeEndpoints, canUseTopology): a backend that
renders a view faithfully behaves like kube-proxy.
"""

from __future__ import annotations

import ipaddress
from socket import inet_ntoa
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

from .config import ProxyConfig
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
    trigger_time: str = field(default="", compare=False)
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
        return "drop" if self.has_endpoints else "reject"

    @property
    def uses_firewall(self) -> bool:
        """loadBalancerSourceRanges filtering on the load-balancer IPs."""
        return self.has_endpoints and bool(self.load_balancer_ips) and bool(self.load_balancer_source_ranges)


@dataclass(frozen=True)
class NodeView:
    node_name: str
    node_ips: tuple[IPAddress, ...]
    pod_cidrs: tuple[IPNetwork, ...]
    ports: tuple[ServicePortView, ...]
    deleting: bool = False
    # the addresses on this node's interfaces, where nodePortAddresses' CIDRs are matched (as
    # kube-proxy matches them); None where they cannot be read (dump, trace): the Node's and loopback
    interface_ips: tuple[IPAddress, ...] | None = None
    service_ranges: tuple[IPNetwork, ...] = ()  # the ServiceCIDRs' ranges, both families

    def service_ranges_of(self, family: int) -> tuple[IPNetwork, ...]:
        return tuple(c for c in self.service_ranges if c.version == family)

    def family(self, family: int) -> tuple[ServicePortView, ...]:
        return tuple(p for p in self.ports if p.family == family)

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
    trigger = max((s.trigger_time for s in slices), default="")
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
                has_endpoints=has_any, trigger_time=trigger,
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
    """build_view with a memo: a service whose Service and EndpointSlice objects are the very same
    objects as last time (sources replace only what changed) keeps its ServicePortViews, so a
    one-endpoint change costs one service's work, not the cluster's. The slices are grouped by
    service incrementally and the sorted service keys kept while the key set stands, so the rest
    of a build is a walk of identity checks. Still pure: the memo only ever returns what the
    computation would."""

    def __init__(self, node_name: str, proxy_name: str = "", primary_ip: str = "") -> None:
        self.node_name = node_name
        self.proxy_name = proxy_name
        # kube-proxy's bindAddress: this address is the node's primary IP, before the Node's own
        self.primary_ip = (ipaddress.ip_address(primary_ip),) if primary_ip else ()
        self._node: Node | None = None
        self._reset()

    def _reset(self) -> None:
        self._memo: dict[str, tuple[Service, list[ServicePortView]]] = {}
        self._slices: dict[str, EndpointSlice] = {}  # a copy of the last build's slices
        self._members: dict[str, set[str]] = {}  # service key -> its slices' keys
        self._groups: dict[str, tuple[EndpointSlice, ...]] = {}  # service key -> slices, by slice key
        self._keys: list[str] = []
        self._key_set: set[str] = set()

    def _regroup(self, slices: dict[str, EndpointSlice]) -> set[str]:
        """Bring the per-service slice groups up to date; return the services whose group changed."""
        prev = self._slices
        touched: set[str] = set()
        moved: list[tuple[str, EndpointSlice | None, EndpointSlice | None]] = []
        for key, s in slices.items():
            old = prev.get(key)
            if old is not s:
                moved.append((key, old, s))
        for key in prev.keys() - slices.keys():
            moved.append((key, prev[key], None))
        for key, old, new in moved:
            if old is not None:
                touched.add(old.service_key)
                self._members.get(old.service_key, set()).discard(key)
            if new is not None:
                touched.add(new.service_key)
                self._members.setdefault(new.service_key, set()).add(key)
        if moved:
            self._slices = dict(slices)
            for service in touched:
                members = self._members.get(service)
                if members:
                    self._groups[service] = tuple(slices[k] for k in sorted(members))  # a stable order
                else:
                    self._groups.pop(service, None)
                    self._members.pop(service, None)
        return touched

    def build(self, cluster: Cluster, local_addresses: Iterable[IPAddress] = (),
              interface_ips: tuple[IPAddress, ...] | None = None) -> NodeView:
        node = cluster.nodes.get(self.node_name)
        if node != self._node:  # topology and locality depend on the node: start over
            self._node = node
            self._reset()
        touched = self._regroup(cluster.slices)
        if cluster.services.keys() != self._key_set:
            self._key_set = set(cluster.services)
            self._keys = sorted(self._key_set)
        memo: dict[str, tuple[Service, list[ServicePortView]]] = {}
        ports: list[ServicePortView] = []
        for key in self._keys:
            svc = cluster.services[key]
            old = self._memo.get(key)
            if old is not None and old[0] is svc and key not in touched:
                views = old[1]
            elif not is_proxied(svc, self.proxy_name):
                views = []
            else:
                views = sorted(service_port_views(svc, self._groups.get(key, ()), node, self.node_name),
                               key=lambda p: p.key)
            memo[key] = (svc, views)
            ports.extend(views)
        self._memo = memo
        node_ips = node_addresses(node, local_addresses)
        if self.primary_ip:
            node_ips = self.primary_ip + tuple(ip for ip in node_ips if ip not in self.primary_ip)
        return NodeView(self.node_name, node_ips, node.pod_cidrs if node else (),
                        tuple(ports), deleting=bool(node and node.deleting), interface_ips=interface_ips,
                        service_ranges=cluster.service_ranges(4) + cluster.service_ranges(6))


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

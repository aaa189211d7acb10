"""One sync: cluster state -> node view -> rendered rules -> kernel, per IP family.

The proxier owns the per-family backends and the renderer memo, so successive syncs are partial
(only what changed is written); the daemon decides when to call it. What differs per mode is the
mode's business (modes.py): nothing here branches on it but localhost NodePorts' sysctl.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .backend import SyncError, SyncResult
from .config import ProxyConfig
from .conntrack import ConntrackCleaner
from .model.cluster import Cluster
from .modes import MODES, mode
from .view import NodeView, ViewBuilder, node_port_networks

log = logging.getLogger("pyproxy")


@dataclass
class SyncReport:
    """What one sync did, per IP family (the metrics are kube-proxy's, labelled by family)."""

    view: NodeView
    results: dict[int, SyncResult] = field(default_factory=dict)
    render_seconds: float = 0.0
    rule_counts: dict[int, dict[str, int]] = field(default_factory=dict)  # family -> table -> rules
    rules_written: dict[int, dict[str, int]] = field(default_factory=dict)  # family -> table -> rules this sync
    stale_flows: dict[int, int] = field(default_factory=dict)  # family -> stale UDP flows deleted
    conntrack_seconds: dict[int, float] = field(default_factory=dict)

    @property
    def stale_flows_deleted(self) -> int:
        return sum(self.stale_flows.values())




class Proxier:
    """`families` None: the families this node has, decided at the first sync (auto_families)."""

    def __init__(self, node_name: str, config: ProxyConfig, families: tuple[int, ...] | None = (4,),
                 proxy_name: str = "") -> None:
        self.mode = mode(config.mode)
        self.mode.check_node()
        self.node_name = node_name
        self.config = config
        self.proxy_name = proxy_name
        self.views = ViewBuilder(node_name, proxy_name, config.bind_address)
        self.renderer = self.mode.renderer(config)
        self.backends: dict[int, Any] = {}
        self.cleaners: dict[int, ConntrackCleaner] = {}
        self._other_mode_cleaned = False
        if families is not None:
            self._serve(families)

    def _serve(self, families: tuple[int, ...]) -> None:
        self.backends = {f: self.mode.writer(f, self.config) for f in families}
        self.cleaners = {f: ConntrackCleaner(f) for f in families}
        if self.mode.name == "iptables" and 4 in families and localhost_node_ports_served(self.config):
            _enable_route_localnet()

    def auto_families(self, cluster: Cluster) -> tuple[int, ...]:
        """The IP families this node has: those of its Node's addresses and podCIDRs (a dual-stack
        cluster gives each node a podCIDR per family), the primary (first address; IPv4 when there
        is none) always, a second one only where the kernel takes its rules. kube-proxy serves
        the second family wherever the kernel takes it; a single-stack node here gets no rules
        for a family it has no address or pod range in."""
        node = cluster.nodes.get(self.node_name)
        seen = [a.version for a in node.addresses] + [c.version for c in node.pod_cidrs] if node else []
        if self.config.bind_address:  # kube-proxy: bindAddress's family is the primary one
            seen.insert(0, ipaddress.ip_address(self.config.bind_address).version)
        primary = seen[0] if seen else 4
        secondary = 10 - primary  # 4 <-> 6
        if secondary not in seen:
            log.info("single-stack: node %s has no IPv%d address or podCIDR", self.node_name, secondary)
            return (primary,)
        problem = self.mode.unsupported(secondary, self.config)
        if problem:
            log.warning("single-stack: IPv%d is not usable here (%s)", secondary, problem)
            return (primary,)
        log.info("dual-stack: node %s has IPv4 and IPv6", self.node_name)
        return tuple(sorted((primary, secondary)))

    def sync(self, cluster: Cluster, full: bool = False, changes: Mapping[str, Iterable[str]] | None = None
             ) -> SyncReport:
        """`changes`: the keys changed since the previous sync, by kind (Follower.take), so
        the view follows them instead of comparing every object; a full sync compares anyway."""
        # A sync allocates hundreds of thousands of short-lived, acyclic objects (views, rule
        # strings); the cyclic GC would rescan the whole model again and again meanwhile. It was
        # half the view-building time at 10,000 services.
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._sync(cluster, full, None if full else changes)
        finally:
            if paused:
                gc.enable()

    def _sync(self, cluster: Cluster, full: bool, changes: Mapping[str, Iterable[str]] | None) -> SyncReport:
        start = time.monotonic()
        if not self.backends:
            self._serve(self.auto_families(cluster))
        view = self.views.build(cluster, interface_ips=interface_ips(), changes=changes)
        report = SyncReport(view)
        report.render_seconds = time.monotonic() - start  # the view; rules render while they are written
        for family, backend in self.backends.items():
            try:
                report.results[family] = backend.sync(self.mode.rules(self.renderer, view, family), full)
            except SyncError as err:
                err.family = family  # the daemon counts failures per IP family, as kube-proxy
                raise
            report.rule_counts[family] = self.mode.rule_counts(backend)
            report.rules_written[family] = self.mode.rules_written(backend)
            started = time.monotonic()
            report.stale_flows[family] = self.cleaners[family].clean(view, full)
            report.conntrack_seconds[family] = time.monotonic() - started
        if not self._other_mode_cleaned:
            self._clean_other_modes()
        return report

    def _clean_other_modes(self) -> None:
        """Switching modes leaves nothing of the other behind (as kube-proxy cleans up at start);
        done after our own rules are in place, so traffic is never without service rules."""
        for other in MODES.values():
            if other is not self.mode:
                other.clean_leftovers(self.backends, self.config, self.mode.name)
        self._other_mode_cleaned = True

    def cleanup(self) -> int:
        return sum(backend.cleanup() for backend in self.backends.values())


def localhost_node_ports_served(config: ProxyConfig) -> bool:
    """kube-proxy's condition for NodePorts on 127.0.0.1 (and so for route_localnet): iptables
    mode's localhostNodePorts, with nodePortAddresses covering IPv4 loopback (all addresses when
    unset; `primary` does not)."""
    if not config.localhost_node_ports:
        return False
    entries = node_port_networks(config, 4)
    loopback = ipaddress.ip_address("127.0.0.1")
    return entries is None or any(e != "primary" and loopback in e for e in entries)


def interface_ips() -> tuple | None:
    """The addresses on this namespace's interfaces, where nodePortAddresses' CIDRs are matched
    (kube-proxy reads them every sync too); None when they cannot be read."""
    from .netlink.route import Netlink, NetlinkError

    try:
        with Netlink() as nl:
            return tuple(iface.ip for iface in nl.addresses())
    except (NetlinkError, OSError) as err:
        log.warning("cannot list this node's addresses (NodePorts follow the Node's): %s", err)
        return None


def _enable_route_localnet() -> None:
    # localhostNodePorts: NodePorts on 127.0.0.1 need the kernel to route loopback-sourced DNAT.
    try:
        with open("/proc/sys/net/ipv4/conf/all/route_localnet", "w") as f:
            f.write("1")
    except OSError as err:
        log.warning("cannot enable route_localnet (localhost NodePorts will not work): %s", err)

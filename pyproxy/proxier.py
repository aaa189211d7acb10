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

from .backend import SyncResult
from .config import ProxyConfig
from .conntrack import ConntrackCleaner
from .model.cluster import Cluster
from .modes import MODES, mode
from .view import NodeView, ViewBuilder, node_port_networks

log = logging.getLogger("pyproxy")


@dataclass
class SyncReport:
    view: NodeView
    results: dict[int, SyncResult] = field(default_factory=dict)
    stale_flows_deleted: int = 0
    render_seconds: float = 0.0
    rule_counts: dict[str, int] = field(default_factory=dict)


class Proxier:
    def __init__(self, node_name: str, config: ProxyConfig, families: tuple[int, ...] = (4,),
                 proxy_name: str = "") -> None:
        self.mode = mode(config.mode)
        self.mode.check_node()
        self.node_name = node_name
        self.config = config
        self.proxy_name = proxy_name
        self.views = ViewBuilder(node_name, proxy_name)
        self.renderer = self.mode.renderer(config)
        self.backends = {f: self.mode.writer(f, config) for f in families}
        self._other_mode_cleaned = False
        self.cleaners = {f: ConntrackCleaner(f) for f in families}
        if self.mode.name == "iptables" and 4 in families and localhost_node_ports_served(config):
            _enable_route_localnet()

    def sync(self, cluster: Cluster, full: bool = False) -> SyncReport:
        # A sync allocates hundreds of thousands of short-lived, acyclic objects (views, rule
        # strings); the cyclic GC would rescan the whole model again and again meanwhile. It was
        # half the view-building time at 10,000 services.
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._sync(cluster, full)
        finally:
            if paused:
                gc.enable()

    def _sync(self, cluster: Cluster, full: bool) -> SyncReport:
        start = time.monotonic()
        view = self.views.build(cluster)
        report = SyncReport(view)
        report.render_seconds = time.monotonic() - start  # the view; rules render while they are written
        counts = {"filter": 0, "nat": 0}
        for family, backend in self.backends.items():
            report.results[family] = backend.sync(self.mode.rules(self.renderer, view, family), full)
            for table, count in self.mode.rule_counts(backend).items():
                counts[table] += count
            report.stale_flows_deleted += self.cleaners[family].clean(view)
        report.rule_counts = counts
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


def _enable_route_localnet() -> None:
    # localhostNodePorts: NodePorts on 127.0.0.1 need the kernel to route loopback-sourced DNAT.
    try:
        with open("/proc/sys/net/ipv4/conf/all/route_localnet", "w") as f:
            f.write("1")
    except OSError as err:
        log.warning("cannot enable route_localnet (localhost NodePorts will not work): %s", err)

"""One sync: cluster state -> node view -> rendered rules -> kernel, per IP family.

The proxier owns the per-family backends and the renderer memo, so successive syncs are partial
(only what changed is written); the daemon decides when to call it.
"""

from __future__ import annotations

import ipaddress

import gc
import logging
import os
import time
from dataclasses import dataclass, field

from .config import ProxyConfig
from .conntrack import ConntrackCleaner
from .backend import SyncResult
from .iptables.apply import ApplyError, IptablesBackend
from .iptables.render import Renderer
from .nftables.apply import NftablesBackend, NftError
from .nftables.render import NftRenderer
from .ipvs.apply import IpvsBackend, ensure_ip_vs
from .ipvs.render import DUMMY_DEVICE, IpvsRenderer
from .model.parse import Cluster
from .view import NodeView, ViewBuilder

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
        if config.mode not in ("iptables", "nftables", "ipvs"):
            raise ValueError(f"mode {config.mode!r} is not available; use iptables, nftables or ipvs")
        self.node_name = node_name
        self.config = config
        self.proxy_name = proxy_name
        self.views = ViewBuilder(node_name, proxy_name)
        self.mode = config.mode
        self.nftables = config.mode == "nftables"
        self.renderer: NftRenderer | Renderer | IpvsRenderer
        self.backends: dict
        if self.nftables:
            self.renderer = NftRenderer(config, config.nftables_table)
            self.backends = {f: NftablesBackend(f, config.nftables_table) for f in families}
        elif self.mode == "ipvs":
            ensure_ip_vs()  # fail at start-up, naming the module, on a node without IPVS
            self.renderer = IpvsRenderer(config)
            self.backends = {f: IpvsBackend(f, config.iptables_variant, config.ipvs_strict_arp,
                                            config.ipvs_exclude_cidrs) for f in families}
        else:
            self.renderer = Renderer(config)
            self.backends = {f: IptablesBackend(f, config.iptables_variant) for f in families}
        self._other_mode_cleaned = False
        self.cleaners = {f: ConntrackCleaner(f) for f in families}
        if self.mode == "iptables" and 4 in families and localhost_node_ports_served(config):
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
            if self.nftables or self.mode == "ipvs":
                report.results[family] = backend.sync(self.renderer.render(view, family), full)
            else:
                report.results[family] = backend.sync(self.renderer.lazy(view, family), full)
                for table in counts:
                    counts[table] += backend.last_ruleset.rule_count(table)
            report.stale_flows_deleted += self.cleaners[family].clean(view)
        report.rule_counts = counts
        if not self._other_mode_cleaned:
            self._clean_other_mode()
        return report

    def _clean_other_mode(self) -> None:
        """Switching modes leaves nothing of the other behind (as kube-proxy cleans up at start);
        done after our own rules are in place, so traffic is never without service rules. (IPVS
        mode's first full sync removes iptables mode's chains itself: the two share chain names.)"""
        if self.mode != "ipvs":
            self._clean_ipvs_leftovers()
        if self.nftables:
            for family in self.backends:
                for variant in ("legacy", "nft"):
                    try:
                        IptablesBackend(family, variant).cleanup()
                    except (ApplyError, FileNotFoundError) as err:
                        log.warning("cleaning iptables-%s rules: %s", variant, err)
        else:
            for family in self.backends:
                try:
                    NftablesBackend(family, self.config.nftables_table).cleanup()
                except (NftError, FileNotFoundError) as err:
                    log.warning("cleaning nftables rules: %s", err)
        self._other_mode_cleaned = True

    def _clean_ipvs_leftovers(self) -> None:
        if not (os.path.exists("/proc/net/ip_vs") or os.path.exists(f"/sys/class/net/{DUMMY_DEVICE}")):
            return  # IPVS mode never ran here (without ip_vs there can be no virtual server)
        for family in self.backends:
            try:
                IpvsBackend(family, self.config.iptables_variant).cleanup(keep_shared_chains=not self.nftables)
            except Exception as err:  # noqa: BLE001 - leftovers must not stop the proxy
                log.warning("cleaning IPVS leftovers: %s", err)

    def cleanup(self) -> int:
        return sum(backend.cleanup() for backend in self.backends.values())


def localhost_node_ports_served(config: ProxyConfig) -> bool:
    """kube-proxy's condition for NodePorts on 127.0.0.1 (and so for route_localnet): iptables
    mode's localhostNodePorts, with nodePortAddresses covering IPv4 loopback (all addresses when
    unset; `primary` does not)."""
    if not config.localhost_node_ports:
        return False
    if not config.node_port_addresses:
        return True
    loopback = ipaddress.ip_address("127.0.0.1")
    return any(a != "primary" and loopback in ipaddress.ip_network(a) for a in config.node_port_addresses)


def _enable_route_localnet() -> None:
    # localhostNodePorts: NodePorts on 127.0.0.1 need the kernel to route loopback-sourced DNAT.
    try:
        with open("/proc/sys/net/ipv4/conf/all/route_localnet", "w") as f:
            f.write("1")
    except OSError as err:
        log.warning("cannot enable route_localnet (localhost NodePorts will not work): %s", err)

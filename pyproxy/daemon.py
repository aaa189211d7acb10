"""The daemon: one loop from a source's store to the kernel, with health, metrics and the
per-service health check servers hanging off it. The same loop serves `pyproxy run -f FILE` and
the Kubernetes API source.

Scheduling is kube-proxy's bounded-frequency runner: a change is applied at most minSyncPeriod
after the previous sync, with a burst of 2 (two syncs may run back to back), a sync runs every
syncPeriod even without changes (a partial one: it rewrites nothing unless the canary is gone),
a full sync hourly (kube-proxy's fullSyncPeriod), at start and after a failure, and nothing is
programmed before Services and EndpointSlices have both been listed. Full syncs are rare on
purpose: they rewrite every chain of ours. Stopping leaves the rules in place.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from .config import ProxyConfig
from .health import FAMILY_NAMES, ProxyHealth, ServiceHealthServers, health_check_ports, health_server
from .metrics import Metrics
from .backend import SyncError
from .proxier import Proxier, SyncReport
from .sources.store import Follower, Store
from .view import PortFollower

log = logging.getLogger("pyproxy")

FULL_SYNC_PERIOD = 3600.0  # kube-proxy's fullSyncPeriod
NODE_WAIT = 30.0  # kube-proxy waits this long for its Node's IPs at start


class Source(Protocol):
    store: Store

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def synced(self) -> bool: ...


class TokenBucket:
    """minSyncPeriod between syncs on average, up to `burst` at once."""

    def __init__(self, interval: float, burst: int = 2) -> None:
        self.interval = interval
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        if self.interval > 0:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) / self.interval)
        else:
            self.tokens = self.burst
        self.stamp = now

    def wait_time(self) -> float:
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) * self.interval

    def take(self) -> None:
        self._refill()
        self.tokens -= 1


class Daemon:
    def __init__(self, source: Source, proxier: Proxier, config: ProxyConfig, serve_http: bool = True,
                 events=None, node_from_api: bool = False) -> None:
        self.source = source
        self.events = events  # an EventRecorder when the source is the API, else None
        self.proxier = proxier
        self.config = config
        self.node_from_api = node_from_api  # kube-proxy's NodeManager: wait for the Node, exit when deleted
        self._node_seen = False
        self._started = time.monotonic()
        self._node_wait_logged = False
        self.metrics = Metrics(config.mode)
        self.health = ProxyHealth(config.sync_period)
        self.health.source_failing = lambda: bool(getattr(source, "failing", False))
        self.service_health = ServiceHealthServers(self.health)
        self.serve_http = serve_http
        self.servers: list = []
        self.stop_event = threading.Event()
        self.exit_code = 0  # what run() returns after a stop asked for by the daemon itself
        self.latencies: list[float] = []  # network programming latencies seen (for benchmarks)
        self.syncs = 0
        self._triggers: dict[str, str] = {}  # slice key -> the trigger time last seen applied
        # the ports with a Local traffic policy, for kube-proxy's no-local-endpoints gauges and the
        # health check node ports: followed change by change, not found by a walk at every sync
        self._local_policy = PortFollower(lambda p: p.internal_policy_local or p.external_policy_local)
        self._follower: Follower | None = None  # the store's changes since the last sync, and a copy kept up to date
        self._changes_seen = (0, 0)
        self._pod_cidrs: tuple | None = None  # detectLocalMode NodeCIDR: the podCIDRs rules were made for
        self._pod_cidrs_waiting = False

    def start_http(self) -> None:
        for address, factory, reason in (
                (self.config.healthz_bind_address, lambda a: health_server(a, self.health, self.metrics.count_health),
                 "FailedToStartProxierHealthcheck"),
                (self.config.metrics_bind_address, lambda a: self.metrics.serve(a, self._status_routes()),
                 "FailedToStartMetricServer")):
            if address:
                try:
                    self.servers.append(factory(address))
                except OSError as err:
                    log.error("cannot listen on %s: %s", address, err)
                    self._event("Warning", reason, f"cannot listen on {address}: {err}")

    def _event(self, type_: str, reason: str, note: str = "") -> None:
        if self.events is not None:
            self.events.event(type_, reason, note)

    def stop(self) -> None:
        """Safe in a signal handler: the handler runs in the main thread, which may be holding
        the store's lock at that moment, so the wake-up is left to a thread of its own."""
        self.stop_event.set()
        threading.Thread(target=self.source.store.wake, name="stop", daemon=True).start()

    def run(self, once: bool = False) -> int:
        if self.serve_http:
            self.start_http()
        self.source.start()
        self._event("Normal", "Starting")  # kube-proxy's birth cry, once the sources run
        try:
            return self._loop(once) or self.exit_code
        finally:
            self.source.stop()
            self.service_health.close()
            for server in self.servers:
                server.shutdown()
                server.server_close()
            log.info("stopping; rules are left in place")

    def _loop(self, once: bool) -> int:
        store = self.source.store
        bucket = TokenBucket(self.config.min_sync_period)
        synced_version = -1
        last_full = last_sync = float("-inf")
        failed = False
        waiting_logged = False
        while not self.stop_event.is_set():
            seen = store.version  # read before the checks: a change during them wakes the wait at once
            if not self.source.synced():
                if not waiting_logged:
                    log.info("waiting for Services and EndpointSlices to be listed")
                    waiting_logged = True
                store.wait_for_change(seen, 0.5)
                continue
            if not self._node_ready(store, once):
                store.wait_for_change(seen, 0.5)
                continue
            if not self._pod_cidrs_known(store):
                if once and self.exit_code == 0:  # a one-shot sync cannot wait for the Node to change
                    log.error("node %s has no podCIDR: detectLocalMode NodeCIDR cannot tell pod traffic",
                              self.proxier.node_name)
                    return 1
                store.wait_for_change(seen, 0.5)
                continue
            version = store.version
            pending = version != synced_version
            if pending:
                self.health.queued(self.proxier.backends)
                for family in self.proxier.backends:
                    self.metrics.last_queued.labels(ip_family=FAMILY_NAMES[family]).set(time.time())
            self._count_changes(store)
            now = time.monotonic()
            full = failed or now - last_full >= max(FULL_SYNC_PERIOD, self.config.sync_period)
            periodic = now - last_sync >= self.config.sync_period
            if not (pending or full or periodic):
                # at most 1 s at a time: a SIGTERM delivered to another thread is only handled
                # once the main thread runs Python again
                store.wait_for_change(version, min(1.0, max(0.05, last_sync + self.config.sync_period - now)))
                continue
            delay = bucket.wait_time()
            if delay > 0:
                self.stop_event.wait(min(delay, 0.5))
                continue
            bucket.take()
            if self._follower is None:  # followed from the first sync on (that one compares everything)
                self._follower = store.follow()
            cluster, version, changes = self._follower.take(take_pending=True)
            # after a failed sync, what it took is not reported yet: this one looks at everything
            reported = None if failed or not self.syncs else changes
            try:
                report = self.proxier.sync(cluster, full=full, changes=changes)
            except Exception as err:  # noqa: BLE001 - keep running; the next sync is a full one
                log.error("sync failed, previous rules left in place: %s", err)
                if isinstance(err, SyncError):  # the kernel refused the rules (any mode)
                    self.metrics.count_failure(getattr(err, "family", 4), partial=not full)
                failed = True
                if once:
                    return 1
                continue
            failed = False
            synced_version = version
            last_sync = now
            if full:
                last_full = now
            self._after_sync(report, cluster, reported)
            if once:
                return 0
        return 0

    def _node_ready(self, store: Store, once: bool = False) -> bool:
        """kube-proxy's NodeManager, for a proxy fed by the API: when the families are not given,
        wait up to 30 s for the Node (its addresses decide them); once seen, a deleted Node makes
        it exit 1 to be restarted (OnNodeDelete). A manifests file without the Node is not waited
        for."""
        if not self.node_from_api:
            return True
        with store.lock:
            node = store.cluster.nodes.get(self.proxier.node_name)
        if node is not None:
            self._node_seen = True
            return True
        if self._node_seen:
            log.error("node %s was deleted: exiting to be restarted, as kube-proxy does", self.proxier.node_name)
            self.exit_code = 1
            self.stop_event.set()
            return False
        if once or self.proxier.backends or time.monotonic() - self._started > NODE_WAIT:
            return True
        if not self._node_wait_logged:
            log.info("waiting up to %.0f s for node %s (its addresses decide the IP families)",
                     NODE_WAIT, self.proxier.node_name)
            self._node_wait_logged = True
        return False

    def _pod_cidrs_known(self, store: Store) -> bool:
        """detectLocalMode NodeCIDR, as kube-proxy: no rules before this node's podCIDRs are known
        (every pod match is written from them), and a restart (exit 1) when they change."""
        if self.config.detect_local_mode != "NodeCIDR":
            return True
        with store.lock:
            node = store.cluster.nodes.get(self.proxier.node_name)
        cidrs = node.pod_cidrs if node else ()
        if self._pod_cidrs is None:
            if not cidrs:
                if not self._pod_cidrs_waiting:
                    log.info("waiting for node %s's podCIDR (detectLocalMode NodeCIDR)", self.proxier.node_name)
                    self._pod_cidrs_waiting = True
                return False
            self._pod_cidrs = cidrs
        elif cidrs and cidrs != self._pod_cidrs:
            log.error("node %s's podCIDRs changed from %s to %s (detectLocalMode NodeCIDR): exiting to be "
                      "restarted with them", self.proxier.node_name, ",".join(map(str, self._pod_cidrs)),
                      ",".join(map(str, cidrs)))
            self.exit_code = 1
            self.stop_event.set()
            return False
        return True

    def _count_changes(self, store: Store) -> None:
        services, endpoints = store.service_changes, store.endpoint_changes
        seen_s, seen_e = self._changes_seen
        self.metrics.service_changes.inc(services - seen_s)
        self.metrics.endpoint_changes.inc(endpoints - seen_e)
        self._changes_seen = (services, endpoints)
        pending_services, pending_slices = store.pending_counts()
        self.metrics.service_changes_pending.set(pending_services)
        self.metrics.endpoint_changes_pending.set(pending_slices)

    def _health_check_hosts(self, view) -> tuple[str, ...]:
        """Where healthCheckNodePort servers listen: the node-port addresses, or every address."""
        from .view import node_port_ips

        chosen = {family: node_port_ips(view, self.config, family) for family in self.proxier.backends}
        if any(ips is None for ips in chosen.values()):
            return ("0.0.0.0",)  # as kube-proxy: one server on every address
        ips = [str(ip) for family_ips in chosen.values() for ip in family_ips]
        return tuple(f"[{ip}]" if ":" in ip else ip for ip in ips)

    def _status_routes(self) -> dict:
        """kube-proxy's paths on the metrics address besides /metrics."""
        import json

        from .config import effective_config

        def healthz():  # the metrics server's /healthz is a plain ping, as kube-proxy's
            return 200, "text/plain; charset=utf-8", b"ok"

        configz = {"kubeproxy.config.k8s.io": effective_config(self.config, self.proxier.node_name)}
        return {"/proxyMode": lambda: (200, "text/plain; charset=utf-8", self.config.mode.encode()),
                "/configz": lambda: (200, "application/json", json.dumps(configz).encode()),
                "/healthz": healthz}

    def _after_sync(self, report: SyncReport, cluster, changes: dict[str, set[str]] | None = None) -> None:
        """`changes`: what the store says changed since the previous sync (None: look at everything)."""
        now = time.time()
        view = report.view
        self._local_policy.follow(view)
        m = self.metrics
        node = cluster.nodes.get(self.proxier.node_name)
        self.health.node_eligible = node is not None and not view.deleting
        m.service_changes_pending.set(0)
        m.endpoint_changes_pending.set(0)
        for family, result in report.results.items():
            ip_family = FAMILY_NAMES[family]
            self.health.updated(family)
            m.last_sync.labels(ip_family=ip_family).set(now)
            duration = result.seconds + report.render_seconds
            m.sync_duration.labels(ip_family=ip_family).observe(duration)
            by_kind = m.full_sync_duration if result.full else m.partial_sync_duration
            if by_kind is not None:
                by_kind.labels(ip_family=ip_family).observe(duration)
            for gauge, counts in ((m.rules, report.rule_counts), (m.rules_last, report.rules_written)):
                for table, count in counts.get(family, {}).items():
                    if gauge is not None:
                        gauge.labels(ip_family=ip_family, table=table).set(count)
            m.conntrack_duration.labels(ip_family=ip_family).observe(report.conntrack_seconds.get(family, 0.0))
            m.conntrack_deleted.labels(ip_family=ip_family).inc(report.stale_flows.get(family, 0))
            local = [p for p in self._local_policy.ports.values() if p.family == family]
            m.no_local_endpoints.labels(ip_family=ip_family, traffic_policy="internal").set(
                sum(1 for p in local if p.internal_policy_local and not p.local_endpoints))
            m.no_local_endpoints.labels(ip_family=ip_family, traffic_policy="external").set(
                sum(1 for p in local if p.external_policy_local and p.externally_accessible and not p.local_endpoints))
            log.info("synced ipv%d: %s, %s, %d chains written, %d deleted, render %.3fs, apply %.3fs, "
                     "%d stale UDP flows removed", family, "full" if result.full else "partial",
                     _ports_synced(view, family, result.full),
                     result.chains_written, result.chains_deleted, report.render_seconds, result.seconds,
                     report.stale_flows.get(family, 0))
        # Network programming latency: slices whose trigger time we have not seen applied yet
        # (only those changed since the last sync, when the store said which).
        keys = cluster.slices.keys() if changes is None else changes.get("EndpointSlice", ())
        for key in keys:
            slice_ = cluster.slices.get(key)
            if slice_ is None or not slice_.trigger_time:
                self._triggers.pop(key, None)
            elif self._triggers.get(key) != slice_.trigger_time:
                self._triggers[key] = slice_.trigger_time
                family = 6 if slice_.address_type == "IPv6" else 4
                if family in report.results:
                    latency = m.observe_trigger(slice_.trigger_time, now, family)
                    if latency is not None:
                        self.latencies.append(latency)
        if changes is None:
            self._triggers = {k: t for k, t in self._triggers.items() if k in cluster.slices}
        self.service_health.sync(health_check_ports(self._local_policy.ports.values()), self._health_check_hosts(view))
        self.syncs += 1


def _ports_synced(view, family: int, full: bool) -> str:
    """For the sync's log line: every port after a full sync; what changed after a partial one
    that followed the view's changes (counting every port is a walk at each sync)."""
    if full or view.changes is None:
        return f"{len(view.family(family))} service ports"
    c = view.changes
    moved = sum(1 for p in (*c.changed, *c.added) if p.family == family)
    moved += sum(1 for key in c.removed if key.endswith(f"/ipv{family}"))  # a port's key ends so
    return f"{moved} service ports changed"


def exit_when_changed(path: str, daemon: "Daemon", poll: float = 2.0) -> threading.Thread:
    """As kube-proxy does with its --config file: when the file changes, stop (exit 1) so that
    the DaemonSet restarts the proxy with the new configuration."""
    import os

    def stamp():
        try:
            st = os.stat(path)
            with open(path, "rb") as f:
                return st.st_ino, f.read()
        except OSError as err:
            return ("gone", err.errno)

    def watch() -> None:
        first = stamp()
        while not daemon.stop_event.wait(poll):
            if stamp() != first:
                log.error("the configuration file %s changed: exiting to be restarted with it", path)
                daemon.exit_code = 1
                daemon.stop()
                return

    thread = threading.Thread(target=watch, name="config-watch", daemon=True)
    thread.start()
    return thread


def node_name(override: str = "", config: ProxyConfig | None = None) -> str:
    """kube-proxy's order: --hostname-override (flag, then config), then NODE_NAME, then the hostname."""
    import os
    import socket

    return (override or (config.hostname_override if config else "") or os.environ.get("NODE_NAME")
            or socket.gethostname()).strip().lower()

"""Prometheus metrics under kube-proxy's names, labels, buckets and types, registered per mode
as kube-proxy 1.37 registers them (pkg/proxy/metrics), so dashboards and alerts keep working.

Left out: kube-proxy's two nfacct packet counters (kubeproxy_iptables_ct_state_invalid_dropped_*
and ..._localhost_nodeports_accepted_*: pyproxy writes no nfacct objects) and the Windows ones.
Vectors show a sample once a label value was used, as in Go's client.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: F401

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               disable_created_metrics, generate_latest)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .health import FAMILY_NAMES, serve

disable_created_metrics()  # Go's client exports no *_created series
_BUCKETS = tuple(0.001 * 2 ** i for i in range(15))  # ExponentialBuckets(0.001, 2, 15)
# MergeBuckets(Linear(0.25, 0.25, 2), Linear(1, 1, 59), Linear(60, 5, 12), Linear(120, 30, 7)),
# which starts with a 0 bucket of its own
_LATENCY_BUCKETS = (0, 0.25, 0.5, *range(1, 60), *range(60, 120, 5), *range(120, 301, 30))
_FAMILY = ["ip_family"]


class Metrics:
    def __init__(self, mode: str = "iptables") -> None:
        self.started = time.time()
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_* (CPU, memory, fds, start time), as kube-proxy exports

        def histogram(name, help_, buckets=_BUCKETS):
            return Histogram(name, help_, _FAMILY, buckets=buckets, registry=r)

        def for_modes(modes, make):
            return make() if mode in modes else None

        # every mode
        self.sync_duration = histogram("kubeproxy_sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds")
        self.last_queued = Gauge("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                                 "The last time a sync of proxy rules was queued", _FAMILY, registry=r)
        self.last_sync = Gauge("kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                               "The last time proxy rules were successfully synced", _FAMILY, registry=r)
        self.endpoint_changes_pending = Gauge("kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                                              "Pending proxy rules Endpoint changes", registry=r)
        self.endpoint_changes = Counter("kubeproxy_sync_proxy_rules_endpoint_changes",
                                        "Cumulative proxy rules Endpoint changes", registry=r)
        self.service_changes_pending = Gauge("kubeproxy_sync_proxy_rules_service_changes_pending",
                                             "Pending proxy rules Service changes", registry=r)
        self.service_changes = Counter("kubeproxy_sync_proxy_rules_service_changes",
                                       "Cumulative proxy rules Service changes", registry=r)
        self.healthz = Counter("kubeproxy_proxy_healthz", "Cumulative proxy healthz HTTP status", ["code"], registry=r)
        self.livez = Counter("kubeproxy_proxy_livez", "Cumulative proxy livez HTTP status", ["code"], registry=r)
        self.network_programming = histogram("kubeproxy_network_programming_duration_seconds",
                                             "In Cluster Network Programming Latency in seconds", _LATENCY_BUCKETS)
        self.no_local_endpoints = Gauge("kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                                        "Number of services with a Local traffic policy and no endpoints",
                                        ["ip_family", "traffic_policy"], registry=r)
        # per mode
        self.full_sync_duration = for_modes(("iptables", "nftables"), lambda: histogram(
            "kubeproxy_sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs"))
        self.partial_sync_duration = for_modes(("iptables", "nftables"), lambda: histogram(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs"))
        self.restore_failures = for_modes(("iptables", "ipvs"), lambda: Counter(
            "kubeproxy_sync_proxy_rules_iptables_restore_failures", "Cumulative proxy iptables restore failures",
            _FAMILY, registry=r))
        self.partial_restore_failures = for_modes(("iptables",), lambda: Counter(
            "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures",
            "Cumulative proxy iptables partial restore failures", _FAMILY, registry=r))
        self.rules = for_modes(("iptables",), lambda: Gauge(
            "kubeproxy_sync_proxy_rules_iptables_total", "Total number of iptables rules owned by kube-proxy",
            ["ip_family", "table"], registry=r))
        self.rules_last = for_modes(("iptables",), lambda: Gauge(
            "kubeproxy_sync_proxy_rules_iptables_last", "Number of iptables rules written by kube-proxy in last sync",
            ["ip_family", "table"], registry=r))
        self.nftables_failures = for_modes(("nftables",), lambda: Counter(
            "kubeproxy_sync_proxy_rules_nftables_sync_failures", "Cumulative proxy nftables sync failures",
            _FAMILY, registry=r))
        self.nftables_cleanup_failures = for_modes(("nftables",), lambda: Counter(
            "kubeproxy_sync_proxy_rules_nftables_cleanup_failures", "Cumulative proxy nftables cleanup failures",
            _FAMILY, registry=r))
        self.conntrack_duration = histogram("kubeproxy_conntrack_reconciler_sync_duration_seconds",
                                            "ReconcileConntrackFlowsLatency latency in seconds")
        self.conntrack_deleted = Counter("kubeproxy_conntrack_reconciler_deleted_entries",
                                         "Cumulative conntrack flows deleted by conntrack reconciler", _FAMILY,
                                         registry=r)

    def count_health(self, endpoint: str, code: int) -> None:
        (self.healthz if endpoint == "healthz" else self.livez).labels(code=str(code)).inc()

    def count_failure(self, family: int, partial: bool) -> None:
        """A sync the kernel refused, under the mode's own failure counter."""
        ip_family = FAMILY_NAMES[family]
        for counter in (self.restore_failures, self.nftables_failures):
            if counter is not None:
                counter.labels(ip_family=ip_family).inc()
        if partial and self.partial_restore_failures is not None:
            self.partial_restore_failures.labels(ip_family=ip_family).inc()

    def observe_trigger(self, trigger_time: str, now: float, family: int = 4) -> float | None:
        """Network programming latency from an EndpointSlice's last-change-trigger-time. As
        kube-proxy, a change from before this proxy started is not one it programmed late."""
        if not trigger_time:
            return None
        try:
            then = datetime.fromisoformat(trigger_time.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
        if then < self.started:
            return None
        latency = max(0.0, now - then)
        self.network_programming.labels(ip_family=FAMILY_NAMES[family]).observe(latency)
        return latency

    def serve(self, address: str, extra: dict[str, Callable[[], tuple[int, str, bytes]]] | None = None
              ) -> ThreadingHTTPServer:
        """/metrics, and kube-proxy's other paths on the metrics address (`extra`: path ->
        (status, content type, body), e.g. /proxyMode, /configz, /healthz)."""
        registry = self.registry
        routes = dict(extra or {})

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                if path == "/metrics":
                    code, kind, data = 200, CONTENT_TYPE_LATEST, generate_latest(registry)
                elif path in routes:
                    code, kind, data = routes[path]()
                else:
                    self.send_error(404)
                    return
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return serve(address, Handler)




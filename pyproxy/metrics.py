"""Prometheus metrics under kube-proxy's names, so existing dashboards and alerts keep working."""

from __future__ import annotations

from datetime import datetime
from typing import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: F401

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .health import serve

_BUCKETS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192,
            16.384)
_LATENCY_BUCKETS = (0.25, 0.5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20, 30, 45, 60, 120, 180, 240, 300)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_* (CPU, memory, fds, start time), as kube-proxy exports
        self.sync_duration = Histogram("kubeproxy_sync_proxy_rules_duration_seconds",
                                       "SyncProxyRules latency in seconds", buckets=_BUCKETS, registry=r)
        self.full_sync_duration = Histogram("kubeproxy_sync_full_proxy_rules_duration_seconds",
                                            "SyncProxyRules latency in seconds for full resyncs", buckets=_BUCKETS,
                                            registry=r)
        self.partial_sync_duration = Histogram("kubeproxy_sync_partial_proxy_rules_duration_seconds",
                                               "SyncProxyRules latency in seconds for partial resyncs",
                                               buckets=_BUCKETS, registry=r)
        self.network_programming = Histogram("kubeproxy_network_programming_duration_seconds",
                                             "In Cluster Network Programming Latency in seconds",
                                             buckets=_LATENCY_BUCKETS, registry=r)
        self.last_sync = Gauge("kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                               "The last time proxy rules were successfully synced", registry=r)
        self.last_queued = Gauge("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                                 "The last time a sync of proxy rules was queued", registry=r)
        self.service_changes_pending = Gauge("kubeproxy_sync_proxy_rules_service_changes_pending",
                                             "Pending proxy rules Service changes", registry=r)
        self.service_changes = Counter("kubeproxy_sync_proxy_rules_service_changes",
                                       "Cumulative proxy rules Service changes", registry=r)
        self.endpoint_changes_pending = Gauge("kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                                              "Pending proxy rules Endpoint changes", registry=r)
        self.endpoint_changes = Counter("kubeproxy_sync_proxy_rules_endpoint_changes",
                                        "Cumulative proxy rules Endpoint changes", registry=r)
        self.restore_failures = Counter("kubeproxy_sync_proxy_rules_iptables_restore_failures",
                                        "Cumulative proxy iptables restore failures", registry=r)
        self.rules = Gauge("kubeproxy_sync_proxy_rules_iptables_total", "Total number of iptables rules owned by kube-proxy",
                           ["table"], registry=r)
        self.no_local_endpoints = Gauge("kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                                        "Number of services with a Local traffic policy and no endpoints",
                                        ["traffic_policy"], registry=r)
        self.healthz = Counter("kubeproxy_proxy_healthz", "Cumulative proxy healthz HTTP status", ["code"], registry=r)
        self.livez = Counter("kubeproxy_proxy_livez", "Cumulative proxy livez HTTP status", ["code"], registry=r)

    def count_health(self, endpoint: str, code: int) -> None:
        (self.healthz if endpoint == "healthz" else self.livez).labels(code=str(code)).inc()

    def observe_trigger(self, trigger_time: str, now: float) -> float | None:
        """Network programming latency from an EndpointSlice's last-change-trigger-time."""
        if not trigger_time:
            return None
        try:
            then = datetime.fromisoformat(trigger_time.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
        latency = max(0.0, now - then)
        self.network_programming.observe(latency)
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




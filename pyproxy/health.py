"""kube-proxy's health endpoints and the per-service healthCheckNodePort servers.

/healthz and /livez (healthzBindAddress, default 0.0.0.0:10256) answer with kube-proxy's body:
healthy, and per IP family (`status.IPv4`, `status.IPv6`) when it last synced and whether it is
healthy: a family is unhealthy once a queued update has waited longer than 2 x syncPeriod
(a family that never synced yet does not count, as in kube-proxy). /healthz is also 503 while
the node is not eligible (no Node object, being deleted, or tainted ToBeDeletedByClusterAutoscaler,
so load balancers drain it). Each externalTrafficPolicy=Local service with a healthCheckNodePort
gets a server answering 200 while this node has ready local endpoints and the proxy is healthy,
503 otherwise, with kube-proxy's JSON body and headers.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    from .view import ServicePortView

log = logging.getLogger("pyproxy.health")

FAMILY_NAMES = {4: "IPv4", 6: "IPv6"}


def _rfc3339(ts: float) -> str:
    if not ts:
        return "0001-01-01T00:00:00Z"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ProxyHealth:
    def __init__(self, sync_period: float, clock: Callable[[], float] = time.time) -> None:
        self.timeout = 2 * sync_period
        self.clock = clock
        self.last_updated: dict[int, float] = {}  # family -> when its rules were last applied
        self.oldest_queued: dict[int, float] = {}  # family -> the oldest change waiting for it
        self.node_eligible = False  # the Node exists, and is neither being deleted nor drained
        self.source_failing: Callable[[], bool] = lambda: False  # the source cannot read its input
        self.lock = threading.Lock()

    def queued(self, families) -> None:
        with self.lock:
            for family in families:
                self.oldest_queued.setdefault(family, self.clock())

    def updated(self, family: int) -> None:
        with self.lock:
            self.last_updated[family] = self.clock()
            self.oldest_queued.pop(family, None)

    def _family_health(self, now: float) -> dict[int, bool]:
        return {family: family not in self.oldest_queued or now - self.oldest_queued[family] < self.timeout
                for family in self.last_updated}

    def healthy(self) -> bool:
        with self.lock:
            return all(self._family_health(self.clock()).values())

    def _body(self) -> tuple[bool, dict]:
        with self.lock:
            now = self.clock()
            families = self._family_health(now)
            status = {FAMILY_NAMES[f]: {"lastUpdated": _rfc3339(self.last_updated[f]), "healthy": ok}
                      for f, ok in sorted(families.items())}
            last = max(self.last_updated.values(), default=0.0)
        healthy = all(families.values())
        body = {"lastUpdated": _rfc3339(last), "currentTime": _rfc3339(now), "healthy": healthy}
        if status:
            body["status"] = status
        return healthy, body

    def livez(self) -> tuple[int, dict]:
        healthy, body = self._body()
        if healthy:  # kube-proxy answers a healthy probe with the current time as lastUpdated
            body["lastUpdated"] = body["currentTime"]
        return (200 if healthy else 503), body

    def healthz(self) -> tuple[int, dict]:
        healthy, body = self._body()
        eligible = self.node_eligible
        body = {**{k: body[k] for k in ("lastUpdated", "currentTime")}, "nodeEligible": eligible,
                **{k: body[k] for k in ("healthy", "status") if k in body}}
        if self.source_failing():
            body["sourceFailing"] = True  # pyproxy's own: the manifests file cannot be read
            healthy = False
        ok = healthy and eligible
        if ok:
            body["lastUpdated"] = body["currentTime"]
        return (200 if ok else 503), body


def _json_handler(route: Callable[[str], tuple[int, dict, dict] | None]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            answer = route(self.path.split("?", 1)[0])
            if answer is None:
                self.send_error(404)
                return
            code, body, headers = answer
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Content-Type-Options", "nosniff")
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def serve(address: str, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    host, _, port = address.rpartition(":")
    server = ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port)), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    return server


def health_server(address: str, health: ProxyHealth, count: Callable[[str, int], None]) -> ThreadingHTTPServer:
    def route(path: str) -> tuple[int, dict, dict] | None:
        if path not in ("/healthz", "/livez"):
            return None
        code, body = health.healthz() if path == "/healthz" else health.livez()
        count(path[1:], code)
        return code, body, {}

    return serve(address, _json_handler(route))


def health_check_ports(ports: Iterable[ServicePortView]) -> dict[int, tuple[str, str, int]]:
    """What the healthCheckNodePort servers answer: port -> (namespace, name, ready local
    endpoints), for the ports with externalTrafficPolicy Local. In the view's order (a service's
    ports by key) whatever order they come in: a service with two ports or families has one
    count, its last port's, as kube-proxy's last writer."""
    wanted = {}
    for p in sorted(ports, key=lambda p: (p.service_key, p.key)):
        if p.health_check_node_port and p.external_policy_local:
            wanted[p.health_check_node_port] = (p.namespace, p.name, sum(1 for ep in p.local_endpoints if ep.ready))
    return wanted


class ServiceHealthServers:
    """HTTP servers per healthCheckNodePort, on the node-port addresses (every address when
    nodePortAddresses is unset, as kube-proxy listens); `sync` starts and stops them to match."""

    def __init__(self, health: ProxyHealth) -> None:
        self.health = health
        self.hosts: tuple[str, ...] = ("0.0.0.0",)
        self.servers: dict[int, list[ThreadingHTTPServer]] = {}
        self.state: dict[int, tuple[str, str, int]] = {}  # port -> (namespace, name, local endpoints)

    def sync(self, wanted: dict[int, tuple[str, str, int]], hosts: tuple[str, ...] = ("0.0.0.0",)) -> None:
        self.state = dict(wanted)
        if hosts != self.hosts:  # the addresses changed: every server moves
            self._stop(list(self.servers))
            self.hosts = hosts
        self._stop([p for p in self.servers if p not in wanted])
        for port in wanted:
            if port in self.servers:
                continue
            self.servers[port] = []
            for host in hosts:
                try:
                    self.servers[port].append(serve(f"{host}:{port}", _json_handler(self._route(port))))
                except OSError as err:
                    log.error("cannot serve healthCheckNodePort %d on %s: %s", port, host, err)

    def _stop(self, ports: list[int]) -> None:
        for port in ports:
            for server in self.servers.pop(port, []):
                server.shutdown()
                server.server_close()

    def _route(self, port: int) -> Callable[[str], tuple[int, dict, dict]]:
        def route(_: str) -> tuple[int, dict, dict]:
            namespace, name, count = self.state.get(port, ("", "", 0))
            healthy = self.health.healthy()
            body = {"service": {"namespace": namespace, "name": name}, "localEndpoints": count,
                    "serviceProxyHealthy": healthy}
            code = 200 if count > 0 and healthy else 503
            return code, body, {"X-Load-Balancing-Endpoint-Weight": str(count)}

        return route

    def close(self) -> None:
        self.sync({})

"""A stand-in kube-apiserver for tests and benchmarks (no real one can be installed here).

It speaks the real protocol to the real `kubernetes` client: bearer-token auth, LIST with
`limit`/`continue` pagination and a list resourceVersion, label and field selectors, and WATCH as a
chunked stream of ADDED/MODIFIED/DELETED/BOOKMARK events resuming from a resourceVersion, with an
ERROR 410 for versions older than the last compaction. Tests inject faults: a dropped connection,
a stalled stream, 410, HTTP 500 on LIST, a slow LIST, and the whole server going away.
"""

from __future__ import annotations

import base64
import copy
import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pyproxy import netns

TOKEN = "test-token"
RESOURCES = {
    "/api/v1/services": ("Service", "v1", True),
    "/apis/discovery.k8s.io/v1/endpointslices": ("EndpointSlice", "discovery.k8s.io/v1", True),
    "/api/v1/nodes": ("Node", "v1", False),
}


def _key(raw: dict) -> str:
    meta = raw["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def _labels_match(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if term.startswith("!"):
            if term[1:] in labels:
                return False
        elif "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k) != v.lstrip("="):
                return False
        elif term not in labels:
            return False
    return True


def _fields_match(selector: str, raw: dict) -> bool:
    for term in filter(None, selector.split(",")):
        k, _, v = term.partition("=")
        if k == "metadata.name" and raw["metadata"]["name"] != v:
            return False
        if k == "metadata.namespace" and raw["metadata"].get("namespace") != v:
            return False
    return True


class Faults:
    def __init__(self) -> None:
        self.list_errors = 0  # answer the next N LISTs with HTTP 500
        self.list_delay = 0.0  # seconds before a LIST answers
        self.drop_watch_after: int | None = None  # close watches abruptly after N events
        self.stall_watches = False  # watches opened meanwhile stay open but silent (not even bookmarks)
        self.gone_once = False  # answer the next WATCH with ERROR 410


class FakeApiServer:
    def __init__(self, netns_name: str | None = None, port: int = 0, bookmark_interval: float = 1.0) -> None:
        self.netns_name = netns_name
        self.objects: dict[str, dict[str, dict]] = {path: {} for path in RESOURCES}
        self.events: list[tuple[int, str, str, dict]] = []
        self.rv = 1000
        self.compacted = 0
        self.cond = threading.Condition()
        self.faults = Faults()
        self.bookmark_interval = bookmark_interval
        self.requests: list[str] = []
        self._connections: set[socket.socket] = set()
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self.start()

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"api": self})
        if self.netns_name:  # the listening socket lives in that namespace (its 127.0.0.1)
            with netns.entered(self.netns_name):
                self._server = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        else:
            self._server = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        self._server.daemon_threads = True
        self._port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        """The API server goes away: listening socket closed, every open connection cut."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        with self.cond:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.cond.notify_all()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def kubeconfig(self, path: str) -> str:
        with open(path, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "test",
                       "clusters": [{"name": "test", "cluster": {"server": self.url}}],
                       "users": [{"name": "test", "user": {"token": TOKEN}}],
                       "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}, f)
        return path

    # -- objects -------------------------------------------------------------------------------------

    def _path_of(self, raw: dict) -> str:
        return {"Service": "/api/v1/services", "EndpointSlice": "/apis/discovery.k8s.io/v1/endpointslices",
                "Node": "/api/v1/nodes"}[raw["kind"]]

    def apply(self, raw: dict) -> dict:
        """Create or update (ADDED or MODIFIED)."""
        raw = copy.deepcopy(raw)
        path = self._path_of(raw)
        with self.cond:
            self.rv += 1
            raw["metadata"]["resourceVersion"] = str(self.rv)
            kind = "MODIFIED" if _key(raw) in self.objects[path] else "ADDED"
            self.objects[path][_key(raw)] = raw
            self.events.append((self.rv, path, kind, raw))
            self.cond.notify_all()
        return raw

    def delete(self, kind: str, namespace: str, name: str) -> None:
        path = self._path_of({"kind": kind})
        with self.cond:
            raw = self.objects[path].pop(f"{namespace}/{name}" if kind != "Node" else f"/{name}")
            self.rv += 1
            raw = {**raw, "metadata": {**raw["metadata"], "resourceVersion": str(self.rv)}}
            self.events.append((self.rv, path, "DELETED", raw))
            self.cond.notify_all()

    def compact(self) -> None:
        """Forget history: watches from any current resourceVersion get 410 Gone."""
        with self.cond:
            self.rv += 1
            self.compacted = self.rv
            self.events.clear()

    def state(self, kind: str) -> dict[str, dict]:
        return copy.deepcopy(self.objects[self._path_of({"kind": kind})])


class _Handler(BaseHTTPRequestHandler):
    api: FakeApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str) -> None:
        self._json(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
                          "message": message})

    def do_GET(self) -> None:  # noqa: N802
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        self.api.requests.append(self.path)
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._status(401, "Unauthorized", "bad token")
        if url.path not in RESOURCES:
            return self._status(404, "NotFound", url.path)
        if query.get("watch") in ("true", "1"):
            return self._watch(url.path, query)
        return self._list(url.path, query)

    def _match(self, path: str, raw: dict, query: dict) -> bool:
        return (_labels_match(query.get("labelSelector", ""), raw["metadata"].get("labels") or {})
                and _fields_match(query.get("fieldSelector", ""), raw))

    def _list(self, path: str, query: dict) -> None:
        api = self.api
        if api.faults.list_delay:
            time.sleep(api.faults.list_delay)
        if api.faults.list_errors > 0:
            api.faults.list_errors -= 1
            return self._status(500, "InternalError", "injected LIST failure")
        kind, version, _ = RESOURCES[path]
        limit = int(query.get("limit") or 0)
        if query.get("continue"):
            rv, offset = json.loads(base64.b64decode(query["continue"]))
            items = self.server_snapshot(path, query, rv)
        else:
            with api.cond:
                rv = api.rv
                items = [copy.deepcopy(o) for k, o in sorted(api.objects[path].items()) if self._match(path, o, query)]
            offset = 0
            self._snapshots[(path, rv, query.get("labelSelector", ""), query.get("fieldSelector", ""))] = items
        page = items[offset: offset + limit] if limit else items[offset:]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if limit and offset + limit < len(items):
            meta["continue"] = base64.b64encode(json.dumps([rv, offset + limit]).encode()).decode()
        self._json(200, {"kind": f"{kind}List", "apiVersion": version, "metadata": meta,
                         "items": [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in page]})

    _snapshots: dict = {}

    def server_snapshot(self, path: str, query: dict, rv: int) -> list[dict]:
        return self._snapshots[(path, rv, query.get("labelSelector", ""), query.get("fieldSelector", ""))]

    def _chunk(self, event: dict) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, path: str, query: dict) -> None:
        api = self.api
        since = int(query.get("resourceVersion") or 0)
        timeout = float(query.get("timeoutSeconds") or 300)
        bookmarks = query.get("allowWatchBookmarks") == "true"
        kind, version, _ = RESOURCES[path]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True
        with api.cond:
            api._connections.add(self.connection)
        sent = 0
        try:
            if api.faults.gone_once or since < api.compacted:
                api.faults.gone_once = False
                self._chunk({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                         "code": 410, "reason": "Expired",
                                                         "message": f"too old resource version: {since}"}})
                return self.wfile.write(b"0\r\n\r\n")
            deadline = time.monotonic() + timeout
            last_bookmark = time.monotonic()
            if api.faults.stall_watches:  # this connection stays open and silent until it ends
                while time.monotonic() < deadline and api.running:
                    time.sleep(0.05)
                return
            while time.monotonic() < deadline and api.running:
                with api.cond:
                    pending = [(rv, k, o) for rv, p, k, o in api.events if p == path and rv > since]
                    if not pending:
                        api.cond.wait(0.1)
                        pending = [(rv, k, o) for rv, p, k, o in api.events if p == path and rv > since]
                    current = api.rv
                for rv, k, raw in pending:
                    since = rv
                    if self._match(path, raw, query):
                        self._chunk({"type": k, "object": {**raw, "kind": kind, "apiVersion": version}})
                        sent += 1
                        if api.faults.drop_watch_after is not None and sent >= api.faults.drop_watch_after:
                            self.connection.shutdown(socket.SHUT_RDWR)  # no terminating chunk: a cut
                            return
                if bookmarks and time.monotonic() - last_bookmark >= api.bookmark_interval:
                    since = max(since, current)
                    self._chunk({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": version,
                                                                "metadata": {"resourceVersion": str(since)}}})
                    last_bookmark = time.monotonic()
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
        finally:
            with api.cond:
                api._connections.discard(self.connection)

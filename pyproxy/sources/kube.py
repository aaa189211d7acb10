"""The Kubernetes API source: list+watch reflectors for Services, EndpointSlices and this Node.

The official `kubernetes` client provides configuration and authentication (in-cluster service
account or a kubeconfig) and the HTTP connection pool; requests and responses are raw JSON parsed
straight into the frozen model (the generated models cost seconds and hundreds of MB at 100k
endpoints), and the list/watch loop is our own rather than `kubernetes.watch.Watch`:

* LIST is paginated (`limit`/`continue`) and gives the resourceVersion to watch from;
* WATCH asks for bookmarks, has a server timeout and a client read timeout (a stalled stream is
  noticed), and resumes from the last resourceVersion seen;
* errors back off exponentially with jitter; a 410 Gone relists, and the relist emits only
  the differences from what the store already holds;
* `synced` is set after the first complete LIST.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..model.parse import ValidationError, parse_endpoint_slice, parse_node, parse_service, parse_service_cidr
from ..model.types import SERVICE_PROXY_NAME_LABEL
from .store import Store

log = logging.getLogger("pyproxy.kube")

HEADLESS_LABEL = "service.kubernetes.io/headless"


class Gone(Exception):
    """The resourceVersion we asked for is too old (HTTP 410 / watch ERROR 410)."""


class ApiError(Exception):
    pass


class NotServed(ApiError):
    """404 on a collection: this API server does not serve the resource (e.g. ServiceCIDRs before 1.33)."""


class Forbidden(ApiError):
    """403: the credentials lack a permission (the ClusterRole); retrying will not help until it is granted."""


@dataclass(frozen=True)
class Resource:
    kind: str
    path: str
    parse: Callable[[dict], Any]

    def key(self, raw: dict) -> str:
        meta = raw.get("metadata") or {}
        if self.kind in ("Node", "ServiceCIDR"):  # cluster-scoped
            return meta.get("name", "")
        return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


SERVICES = Resource("Service", "/api/v1/services", parse_service)
ENDPOINT_SLICES = Resource("EndpointSlice", "/apis/discovery.k8s.io/v1/endpointslices", parse_endpoint_slice)
NODES = Resource("Node", "/api/v1/nodes", parse_node)
SERVICE_CIDRS = Resource("ServiceCIDR", "/apis/networking.k8s.io/v1/servicecidrs", parse_service_cidr)


def proxy_label_selector(proxy_name: str = "") -> str:
    """kube-proxy's selector: services claimed by another proxy, and headless ones, are not even
    listed (a proxy name set in the config selects the services labelled with it instead)."""
    if proxy_name:
        return f"{SERVICE_PROXY_NAME_LABEL}={proxy_name},!{HEADLESS_LABEL}"
    return f"!{SERVICE_PROXY_NAME_LABEL},!{HEADLESS_LABEL}"


class KubeClient:
    """Raw JSON GETs over the official client's configuration, auth and connection pool."""

    def __init__(self, kubeconfig: str | None = None, connect_timeout: float = 5.0, master: str = "") -> None:
        from kubernetes import client, config  # the only place the client is imported

        cfg = client.Configuration()
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        elif not master:
            config.load_incluster_config(client_configuration=cfg)
        if master:  # kube-proxy's --master: this API server, over the kubeconfig's (or alone)
            cfg.host = master.rstrip("/")
        self.api = client.ApiClient(cfg)
        self.connect_timeout = connect_timeout

    def get(self, path: str, params: dict[str, Any], read_timeout: float):
        query = [(k, v) for k, v in params.items() if v not in (None, "")]
        try:
            resp = self.api.call_api(path, "GET", query_params=query, header_params={"Accept": "application/json"},
                                     auth_settings=["BearerToken"], _preload_content=False,
                                     _request_timeout=(self.connect_timeout, read_timeout))
        except Exception as err:  # ApiException for HTTP errors, urllib3 errors for the network
            status = getattr(err, "status", None)
            if status == 410:
                raise Gone(str(err)) from None
            message = _status_message(getattr(err, "body", None)) or getattr(err, "reason", err)
            kind = Forbidden if status == 403 else NotServed if status == 404 else ApiError
            raise kind(f"GET {path}: {status or ''} {message}") from None
        return resp[0] if isinstance(resp, tuple) else resp

    def post(self, path: str, body: dict, timeout: float = 10.0) -> None:
        try:
            self.api.call_api(path, "POST", body=body, header_params={"Content-Type": "application/json",
                                                                   "Accept": "application/json"},
                              auth_settings=["BearerToken"], _preload_content=False,
                              _request_timeout=(self.connect_timeout, timeout))
        except Exception as err:  # noqa: BLE001 - as get(): one error type, the API's message
            status = getattr(err, "status", None)
            message = _status_message(getattr(err, "body", None)) or getattr(err, "reason", err)
            raise (Forbidden if status == 403 else ApiError)(f"POST {path}: {status or ''} {message}") from None


def _status_message(body: Any) -> str:
    """The message of a Kubernetes Status response body, if it is one."""
    try:
        return str(json.loads(body).get("message", ""))[:300]
    except (TypeError, ValueError, AttributeError):
        return ""


NOT_SERVED_RETRY = 300.0  # seconds between two asks for a resource the API server does not serve


class Reflector:
    def __init__(self, client: KubeClient, resource: Resource, store: Store, label_selector: str = "",
                 field_selector: str = "", page_size: int = 500, watch_timeout: int = 300,
                 read_slack: float = 30.0, backoff_base: float = 0.5, backoff_max: float = 30.0) -> None:
        self.client = client
        self.resource = resource
        self.store = store
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.read_slack = read_slack
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.resource_version = ""
        self.stopped = threading.Event()
        self.relists = 0

    # -- store updates -------------------------------------------------------------------------------

    def _parse(self, key: str, raw: dict) -> Any:
        raw.setdefault("kind", self.resource.kind)
        version = (raw.get("metadata") or {}).get("resourceVersion", "")
        try:
            return self.resource.parse(raw)
        except ValidationError as err:
            tag = f"{self.resource.kind} {key}@{version}"
            if self.store.invalid.get(tag) is None:  # once per object version
                log.warning("skipped invalid object: %s", err)
                self.store.invalid[tag] = str(err)
            return None

    def _set(self, key: str, obj: Any) -> bool:
        return self.store.set(self.resource.kind, key, obj)

    def replace(self, parsed: dict[str, Any]) -> int:
        """Apply a full LIST (key -> parsed object or None): add/update what is listed, delete
        what is not. Returns the number of changes."""
        changes = 0
        with self.store.lock:
            table = self.store.table(self.resource.kind)
            for key in [k for k in table if k not in parsed]:
                changes += self._set(key, None)
            for key, obj in parsed.items():
                changes += self._set(key, obj)
            self.store.synced[self.resource.kind] = True
            self.store.changed.notify_all()
        return changes

    def apply_event(self, kind: str, raw: dict) -> bool:
        key = self.resource.key(raw)
        obj = None if kind == "DELETED" else self._parse(key, raw)
        with self.store.lock:
            changed = self._set(key, obj)
            if changed:
                self.store.changed.notify_all()
        return changed

    # -- list and watch ------------------------------------------------------------------------------

    def list(self) -> None:
        # Each page is parsed into the model as it arrives and its JSON dropped: at 100k
        # endpoints the decoded JSON of a whole LIST would be several times the model's size.
        parsed: dict[str, Any] = {}
        cont = ""
        while True:
            resp = self.client.get(self.resource.path, {"limit": self.page_size, "continue": cont,
                                                        "labelSelector": self.label_selector,
                                                        "fieldSelector": self.field_selector},
                                   read_timeout=60)
            try:
                body = json.loads(resp.data)
            finally:
                resp.release_conn()
            for raw in body.get("items") or []:
                key = self.resource.key(raw)
                parsed[key] = self._parse(key, raw)
            meta = body.get("metadata") or {}
            del body
            cont = meta.get("continue") or ""
            if not cont:
                self.resource_version = meta.get("resourceVersion", "")
                break
        changes = self.replace(parsed)
        self.relists += 1
        log.info("listed %d %ss (resourceVersion %s, %d changes)", len(parsed), self.resource.kind,
                 self.resource_version, changes)

    def watch(self) -> None:
        resp = self.client.get(self.resource.path, {
            "watch": "true", "resourceVersion": self.resource_version, "allowWatchBookmarks": "true",
            "timeoutSeconds": self.watch_timeout, "labelSelector": self.label_selector,
            "fieldSelector": self.field_selector}, read_timeout=self.watch_timeout + self.read_slack)
        buffer = b""
        try:
            for chunk in resp.stream(65536, decode_content=True):
                if self.stopped.is_set():
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        self._event(json.loads(line))
        finally:
            resp.release_conn()

    def _event(self, event: dict) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone(obj.get("message", "resource version too old"))
            raise ApiError(f"watch error: {obj.get('code')} {obj.get('message')}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self.apply_event(kind, obj)
        if version:
            self.resource_version = version  # BOOKMARK only moves this forward

    def run(self) -> None:
        failures = 0
        need_list = True
        while not self.stopped.is_set():
            try:
                if need_list:
                    self.list()
                    need_list = False
                self.watch()
                failures = 0  # a watch that ended by its timeout is normal: watch again
            except Gone as err:
                log.info("%s watch expired (%s): relisting", self.resource.kind, err)
                need_list = True
            except NotServed as err:  # asked again now and then, quietly: an upgrade may bring it
                if failures == 0:
                    log.info("the API server does not serve %ss (%s): going on without them", self.resource.kind, err)
                failures += 1
                self.stopped.wait(NOT_SERVED_RETRY)
            except Exception as err:  # noqa: BLE001 - network and server faults: back off, retry
                if self.stopped.is_set():
                    break
                failures += 1
                delay = min(self.backoff_max, self.backoff_base * 2 ** min(failures, 10)) * random.uniform(0.5, 1.0)
                (log.error if isinstance(err, Forbidden) else log.warning)("%s %s failed (%s); retrying in %.1fs", self.resource.kind,
                            "list" if need_list else "watch", err, delay)
                self.stopped.wait(delay)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=f"reflector-{self.resource.kind}", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.stopped.set()


class KubeSource:
    """Services, EndpointSlices and this node's Node, reflected into one Store."""

    def __init__(self, client: KubeClient, node_name: str, proxy_name: str = "", label_selector: str | None = None,
                 **reflector_options: Any) -> None:
        """`label_selector` None: the proxy's selector; "" (for DNS): every service."""
        self.store = Store()
        selector = proxy_label_selector(proxy_name) if label_selector is None else label_selector
        self.reflectors = [
            Reflector(client, SERVICES, self.store, label_selector=selector, **reflector_options),
            Reflector(client, ENDPOINT_SLICES, self.store, label_selector=selector, **reflector_options),
        ]
        if node_name:  # a proxy (not the DNS responder): its Node, and where ClusterIPs come from
            self.reflectors.append(Reflector(client, NODES, self.store, field_selector=f"metadata.name={node_name}",
                                             **reflector_options))
            self.reflectors.append(Reflector(client, SERVICE_CIDRS, self.store, **reflector_options))

    def start(self) -> None:
        for r in self.reflectors:
            r.start()

    def stop(self) -> None:
        for r in self.reflectors:
            r.stop()

    def synced(self) -> bool:
        return self.store.synced.get("Service", False) and self.store.synced.get("EndpointSlice", False)


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()

"""Kubernetes API objects (decoded JSON/YAML) -> frozen model values.

One bad object raises ValidationError naming the object and the field path; `parse_objects`
collects those errors and keeps every valid object, so one malformed Service never stops the
others from being programmed. Kinds pyproxy does not use are ignored silently.
"""

from __future__ import annotations

import ipaddress
import sys
from typing import Any, Iterable

from . import names
from .cluster import Cluster
from .types import (
    SERVICE_LABEL_PREFIX,
    SERVICE_NAME_LABEL,
    TOPOLOGY_HINTS_ANNOTATION,
    TOPOLOGY_MODE_ANNOTATION,
    TRIGGER_TIME_ANNOTATION,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    IPAddress,
    Node,
    Service,
    ServiceCIDR,
    ServicePort,
)

PROTOCOLS = ("TCP", "UDP", "SCTP")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
DEFAULT_AFFINITY_TIMEOUT = 10800
AUTOSCALER_DELETION_TAINT = "ToBeDeletedByClusterAutoscaler"


class ValidationError(ValueError):
    def __init__(self, ref: str, path: str, message: str) -> None:
        super().__init__(f"{ref}: {path}: {message}")
        self.ref, self.path, self.message = ref, path, message


class _Reader:
    """Typed access to one object's fields; every failure names the field path."""

    def __init__(self, ref: str) -> None:
        self.ref = ref

    def fail(self, path: str, message: str) -> ValidationError:
        return ValidationError(self.ref, path, message)

    def get(self, obj: Any, path: str, key: str, kind: type | tuple, default: Any) -> Any:
        if not isinstance(obj, dict):
            raise self.fail(path, "expected an object")
        value = obj.get(key)
        if value is None:
            return default
        if isinstance(value, bool) and kind is int or not isinstance(value, kind):
            name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.fail(f"{path}.{key}" if path else key, f"expected {name}, got {names.shown(value)}")
        return value

    def ip(self, value: Any, path: str) -> IPAddress:
        try:
            return ipaddress.ip_address(value.strip() if isinstance(value, str) else "")
        except ValueError:
            raise self.fail(path, f"invalid IP address {names.shown(value)}") from None

    def port(self, value: Any, path: str, allow_zero: bool = False) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not (0 if allow_zero else 1) <= value <= 65535:
            raise self.fail(path, f"invalid port {names.shown(value)} (1-65535)")
        return value

    def labels(self, labels: dict, prefix: str = "") -> tuple[tuple[str, str], ...]:
        """The labels (only those under `prefix`: what pyproxy reads; a model of 100,000 objects
        should not carry every app's labels)."""
        for key, value in labels.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise self.fail("metadata.labels", f"keys and values must be strings, got {names.shown(key)}")
        return tuple(sorted((sys.intern(k), sys.intern(v)) for k, v in labels.items() if k.startswith(prefix)))

    def name(self, value: str, path: str, rule) -> str:
        """An optional name (empty is allowed) that must follow `rule` when set."""
        problem = rule(value) if value else None
        if problem:
            raise self.fail(path, problem)
        return sys.intern(value)  # port and node names repeat across thousands of objects

    def protocol(self, value: Any, path: str) -> str:
        value = value or "TCP"
        if value not in PROTOCOLS:
            raise self.fail(path, f"unsupported protocol {names.shown(value)} (TCP, UDP, SCTP)")
        return sys.intern(value)


# The name rule the API server applies to each kind's metadata.name.
NAME_RULES = {"Service": names.dns1035_label, "EndpointSlice": names.dns1123_subdomain,
              "Node": names.dns1123_subdomain, "ServiceCIDR": names.dns1123_subdomain}


def _name(meta: Any, kind: str) -> str:
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise ValidationError(f"{kind} <unnamed>", "metadata", "expected an object")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ValidationError(f"{kind} <unnamed>", "metadata.name", "required")
    problem = NAME_RULES[kind](name)
    if problem:
        raise ValidationError(f"{kind} {names.shown(name)}", "metadata.name", problem)
    return name


def _meta(raw: dict, kind: str) -> tuple[str, str, dict, dict]:
    meta = raw.get("metadata")
    name = _name(meta, kind)  # meta is a map from here on
    namespace = meta.get("namespace") or "default"
    if not isinstance(namespace, str) or names.dns1123_label(namespace):
        raise ValidationError(f"{kind} {name}", "metadata.namespace",
                              names.dns1123_label(namespace) if isinstance(namespace, str) else "expected a string")
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    if not isinstance(labels, dict) or not isinstance(annotations, dict):
        raise ValidationError(f"{kind} {namespace}/{name}", "metadata", "labels/annotations must be maps")
    return sys.intern(namespace), name, labels, annotations


def parse_service(raw: dict) -> Service:
    namespace, name, labels, annotations = _meta(raw, "Service")
    r = _Reader(f"Service {namespace}/{name}")
    spec = r.get(raw, "", "spec", dict, {})
    status = r.get(raw, "", "status", dict, {})
    svc_type = r.get(spec, "spec", "type", str, "ClusterIP")
    if svc_type not in SERVICE_TYPES:
        raise r.fail("spec.type", f"unknown type {names.shown(svc_type)}")

    raw_ips = r.get(spec, "spec", "clusterIPs", list, None) or (
        [spec["clusterIP"]] if spec.get("clusterIP") else [])
    headless = raw_ips[:1] == ["None"]
    cluster_ips: tuple[IPAddress, ...] = ()
    if not headless and svc_type != "ExternalName":
        if not raw_ips:
            raise r.fail("spec.clusterIP", "no cluster IP allocated")
        cluster_ips = tuple(r.ip(ip, f"spec.clusterIPs[{i}]") for i, ip in enumerate(raw_ips))
        if len({ip.version for ip in cluster_ips}) != len(cluster_ips):
            raise r.fail("spec.clusterIPs", "at most one address per IP family")

    ports = []
    raw_ports = r.get(spec, "spec", "ports", list, [])
    for i, p in enumerate(raw_ports):
        path = f"spec.ports[{i}]"
        port_name = r.name(r.get(p, path, "name", str, ""), f"{path}.name", names.dns1123_label)
        if len(raw_ports) > 1 and not port_name:
            raise r.fail(f"{path}.name", "required when a service has several ports")
        node_port = p.get("nodePort") or 0
        ports.append(ServicePort(
            name=port_name,
            protocol=r.protocol(p.get("protocol"), f"{path}.protocol"),
            port=r.port(p.get("port"), f"{path}.port"),
            node_port=r.port(node_port, f"{path}.nodePort", allow_zero=True) if svc_type in ("NodePort", "LoadBalancer") else 0,
        ))
    seen = set()
    for i, p in enumerate(ports):
        if (p.name, p.protocol) in seen or (p.port, p.protocol) in {(q.port, q.protocol) for q in ports[:i]}:
            raise r.fail(f"spec.ports[{i}]", "duplicate port")
        seen.add((p.name, p.protocol))

    external_ips = tuple(r.ip(ip, f"spec.externalIPs[{i}]")
                         for i, ip in enumerate(r.get(spec, "spec", "externalIPs", list, [])))
    lb_ips = []
    if svc_type == "LoadBalancer":
        lb = r.get(status, "status", "loadBalancer", dict, {})
        for i, ingress in enumerate(r.get(lb, "status.loadBalancer", "ingress", list, [])):
            ip = r.get(ingress, f"status.loadBalancer.ingress[{i}]", "ip", str, "")
            # ipMode "Proxy": the load balancer proxies; traffic to the VIP must leave the node.
            if ip and r.get(ingress, f"status.loadBalancer.ingress[{i}]", "ipMode", str, "VIP") != "Proxy":
                lb_ips.append(r.ip(ip, f"status.loadBalancer.ingress[{i}].ip"))
    ranges = []
    for i, cidr in enumerate(r.get(spec, "spec", "loadBalancerSourceRanges", list, [])):
        try:  # kube-proxy trims whitespace in these for backward compatibility
            ranges.append(ipaddress.ip_network(cidr.strip() if isinstance(cidr, str) else "", strict=False))
        except ValueError:
            raise r.fail(f"spec.loadBalancerSourceRanges[{i}]", f"invalid CIDR {names.shown(cidr)}") from None

    etp = r.get(spec, "spec", "externalTrafficPolicy", str, "Cluster")
    itp = r.get(spec, "spec", "internalTrafficPolicy", str, "Cluster")
    for path, value in (("spec.externalTrafficPolicy", etp), ("spec.internalTrafficPolicy", itp)):
        if value not in ("Cluster", "Local"):
            raise r.fail(path, f"must be Cluster or Local, got {names.shown(value)}")
    affinity = r.get(spec, "spec", "sessionAffinity", str, "None")
    if affinity not in ("None", "ClientIP"):
        raise r.fail("spec.sessionAffinity", f"must be None or ClientIP, got {names.shown(affinity)}")
    timeout = 0
    if affinity == "ClientIP":
        cfg = r.get(spec, "spec", "sessionAffinityConfig", dict, {})
        client = r.get(cfg, "spec.sessionAffinityConfig", "clientIP", dict, {})
        timeout = r.get(client, "spec.sessionAffinityConfig.clientIP", "timeoutSeconds", int, DEFAULT_AFFINITY_TIMEOUT)
        if not 0 < timeout <= 86400:
            raise r.fail("spec.sessionAffinityConfig.clientIP.timeoutSeconds", f"must be 1-86400, got {timeout}")
    hc = r.get(spec, "spec", "healthCheckNodePort", int, 0)
    topology = annotations.get(TOPOLOGY_MODE_ANNOTATION) or annotations.get(TOPOLOGY_HINTS_ANNOTATION) or ""
    return Service(
        namespace=namespace, name=name, type=sys.intern(svc_type), cluster_ips=cluster_ips, headless=headless,
        ports=tuple(ports), external_ips=external_ips, load_balancer_ips=tuple(lb_ips),
        load_balancer_source_ranges=tuple(ranges),
        external_traffic_policy=sys.intern(etp), internal_traffic_policy=sys.intern(itp),
        health_check_node_port=r.port(hc, "spec.healthCheckNodePort", allow_zero=True) if etp == "Local" else 0,
        session_affinity_timeout=timeout,
        traffic_distribution=r.get(spec, "spec", "trafficDistribution", str, ""),
        topology_mode=topology.lower() if isinstance(topology, str) else "",
        publish_not_ready_addresses=r.get(spec, "spec", "publishNotReadyAddresses", bool, False),
        external_name=r.get(spec, "spec", "externalName", str, ""),
        labels=r.labels(labels, SERVICE_LABEL_PREFIX),
    )


def parse_endpoint_slice(raw: dict) -> EndpointSlice | None:
    namespace, name, labels, annotations = _meta(raw, "EndpointSlice")
    r = _Reader(f"EndpointSlice {namespace}/{name}")
    address_type = r.get(raw, "", "addressType", str, "")
    if address_type == "FQDN":
        return None  # not proxied, as in kube-proxy
    if address_type not in ("IPv4", "IPv6"):
        raise r.fail("addressType", f"must be IPv4, IPv6 or FQDN, got {names.shown(address_type)}")
    service = labels.get(SERVICE_NAME_LABEL)
    if not service or not isinstance(service, str):
        raise r.fail(f"metadata.labels[{SERVICE_NAME_LABEL}]",
                     "required: the slice names no service" if not service else f"expected a string, got {names.shown(service)}")
    service = r.name(service, f"metadata.labels[{SERVICE_NAME_LABEL}]", names.dns1035_label)
    version = 4 if address_type == "IPv4" else 6
    endpoints = []
    for i, ep in enumerate(r.get(raw, "", "endpoints", list, [])):
        path = f"endpoints[{i}]"
        addrs = tuple(r.ip(a, f"{path}.addresses[{j}]") for j, a in enumerate(r.get(ep, path, "addresses", list, [])))
        if not addrs:
            raise r.fail(f"{path}.addresses", "at least one address is required")
        if any(a.version != version for a in addrs):
            raise r.fail(f"{path}.addresses", f"address family does not match addressType {address_type}")
        cond = r.get(ep, path, "conditions", dict, {})
        # Unset conditions as kube-proxy's endpointslicecache reads them: ready and serving true,
        # terminating false.
        ready = r.get(cond, f"{path}.conditions", "ready", bool, True)
        hints = r.get(ep, path, "hints", dict, {})
        endpoints.append(Endpoint(
            addresses=addrs,
            ready=ready,
            serving=r.get(cond, f"{path}.conditions", "serving", bool, True),
            terminating=r.get(cond, f"{path}.conditions", "terminating", bool, False),
            node_name=r.name(r.get(ep, path, "nodeName", str, ""), f"{path}.nodeName", names.dns1123_subdomain),
            zone=r.name(r.get(ep, path, "zone", str, ""), f"{path}.zone", names.label_value),
            hostname=r.name(r.get(ep, path, "hostname", str, ""), f"{path}.hostname", names.dns1123_label),
            hint_zones=tuple(z.get("name", "") for z in r.get(hints, f"{path}.hints", "forZones", list, []) if isinstance(z, dict)),
            hint_nodes=tuple(n.get("name", "") for n in r.get(hints, f"{path}.hints", "forNodes", list, []) if isinstance(n, dict)),
        ))
    ports = []
    for i, p in enumerate(r.get(raw, "", "ports", list, [])):
        path = f"ports[{i}]"
        port = p.get("port") if isinstance(p, dict) else None
        if port is None:
            continue  # a port without a number means "all ports": not usable for proxying
        ports.append(EndpointPort(r.name(r.get(p, path, "name", str, ""), f"{path}.name", names.dns1123_label),
                                  r.protocol(p.get("protocol"), f"{path}.protocol"),
                                  r.port(port, f"{path}.port")))
    return EndpointSlice(namespace, name, service, sys.intern(address_type), tuple(endpoints), tuple(ports),
                         r.get(annotations, "metadata.annotations", TRIGGER_TIME_ANNOTATION, str, ""))


def parse_node(raw: dict) -> Node:
    meta = raw.get("metadata")
    name = _name(meta, "Node")
    r = _Reader(f"Node {name}")
    spec = r.get(raw, "", "spec", dict, {})
    status = r.get(raw, "", "status", dict, {})
    addresses = []
    for i, a in enumerate(r.get(status, "status", "addresses", list, [])):
        if isinstance(a, dict) and a.get("type") in ("InternalIP", "ExternalIP"):
            addresses.append(r.ip(a.get("address"), f"status.addresses[{i}].address"))
    cidrs = r.get(spec, "spec", "podCIDRs", list, None) or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    pod_cidrs = []
    for i, c in enumerate(cidrs):
        try:
            pod_cidrs.append(ipaddress.ip_network(c if isinstance(c, str) else ""))
        except ValueError:
            raise r.fail(f"spec.podCIDRs[{i}]", f"invalid CIDR {names.shown(c)}") from None
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        raise r.fail("metadata.labels", "expected a map")
    taints = r.get(spec, "spec", "taints", list, [])
    # kube-proxy's node eligibility (KEP-3836): a node being deleted, or one the cluster
    # autoscaler is about to remove, fails /healthz so load balancers drain it first
    leaving = any(isinstance(t, dict) and t.get("key") == AUTOSCALER_DELETION_TAINT for t in taints)
    return Node(name, tuple(addresses), tuple(pod_cidrs), r.labels(labels),
                deleting=bool(meta.get("deletionTimestamp")) or leaving)


def parse_service_cidr(raw: dict) -> ServiceCIDR:
    name = _name(raw.get("metadata"), "ServiceCIDR")
    r = _Reader(f"ServiceCIDR {name}")
    spec = r.get(raw, "", "spec", dict, {})
    cidrs = []
    for i, c in enumerate(r.get(spec, "spec", "cidrs", list, [])):
        try:
            cidrs.append(ipaddress.ip_network(c if isinstance(c, str) else ""))
        except ValueError:
            raise r.fail(f"spec.cidrs[{i}]", f"invalid CIDR {names.shown(c)}") from None
    return ServiceCIDR(name, tuple(cidrs))


PARSERS = {"Service": parse_service, "EndpointSlice": parse_endpoint_slice, "Node": parse_node,
           "ServiceCIDR": parse_service_cidr}


def parse_object(raw: Any) -> Service | EndpointSlice | Node | ServiceCIDR | None:
    if not isinstance(raw, dict):
        raise ValidationError("<document>", "", "expected a Kubernetes object")
    kind = raw.get("kind", "")
    if not isinstance(kind, str):
        raise ValidationError("<document>", "kind", f"expected a string, got {names.shown(kind)}")
    parser = PARSERS.get(kind)
    return parser(raw) if parser else None


def is_list(doc: Any) -> bool:
    """A `kind: List` (or ServiceList, ...) document."""
    kind = doc.get("kind") if isinstance(doc, dict) else None
    return isinstance(kind, str) and kind.endswith("List") and isinstance(doc.get("items"), list)


def _flatten(docs: Iterable[Any]) -> Iterable[Any]:
    for doc in docs:
        if doc is None:
            continue
        if is_list(doc):
            kind = doc["kind"][: -len("List")]
            for item in doc["items"]:
                if isinstance(item, dict) and "kind" not in item and kind:  # typed lists (ServiceList) omit it
                    item = {**item, "kind": kind}
                yield item
        else:
            yield doc


def parse_objects(docs: Iterable[Any]) -> Cluster:
    cluster = Cluster()
    for raw in _flatten(docs):
        try:
            obj = parse_object(raw)
        except ValidationError as err:
            cluster.errors.append(str(err))
            continue
        if obj is not None:
            cluster.add(obj)
    return cluster

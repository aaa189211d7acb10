"""Raw Kubernetes API objects (the dicts parse_objects and the stand-in API server take), for tests.

A port is a number (unnamed), a tuple (name, number[, protocol]) or a ports[] entry as a dict
(targetPort and all); a key left unset is not
written (the parser defaults it as the API server would). apiVersion is written only when asked."""

from __future__ import annotations

from typing import Any

SERVICE_NAME = "kubernetes.io/service-name"


def _port(p: int | tuple | dict, node_port: int = 0) -> dict[str, Any]:
    """One ports[] entry from a number, (name, number[, protocol]) or the entry itself (a dict)."""
    if isinstance(p, dict):
        return dict(p)
    name, number, protocol = (None, p, None) if isinstance(p, int) else (*p, None)[:3]
    return {**({"name": name} if name is not None else {}), "port": number,
            **({"protocol": protocol} if protocol else {}), **({"nodePort": node_port} if node_port else {})}


def service(name: str, cluster_ip: str | None = "10.96.0.10", ports=(("http", 80),), *, node_port: int = 0,
            namespace: str = "ns", labels: dict | None = None, annotations: dict | None = None,
            api_version: bool = False, **spec: Any) -> dict[str, Any]:
    """A Service; cluster_ip None and ports () are left out, node_port goes on every port, spec adds fields."""
    metadata = {"namespace": namespace, "name": name, **({"labels": dict(labels)} if labels is not None else {}),
                **({"annotations": dict(annotations)} if annotations is not None else {})}
    return {**({"apiVersion": "v1"} if api_version else {}), "kind": "Service", "metadata": metadata,
            "spec": {**({"clusterIP": cluster_ip} if cluster_ip is not None else {}),
                     **({"ports": [_port(p, node_port) for p in ports]} if ports else {}), **spec}}


def endpoint(ip: str, node: str | None = None, *, hostname: str | None = None, zones=(),
             **conditions: bool) -> dict[str, Any]:
    """One endpoints[] entry: its address, nodeName, hostname, conditions (ready=...) and zone hints."""
    return {"addresses": [ip], **({"nodeName": node} if node is not None else {}),
            **({"hostname": hostname} if hostname is not None else {}),
            **({"conditions": conditions} if conditions else {}),
            **({"hints": {"forZones": [{"name": z} for z in zones]}} if zones else {})}


def endpoint_slice(service: str, endpoints, ports=(("http", 8080),), *, family: str = "IPv4",
                   namespace: str = "ns", name: str | None = None, api_version: bool = False) -> dict[str, Any]:
    """An EndpointSlice <service>-x of service; each endpoint a dict, an ip or an (ip, node) tuple."""
    return {**({"apiVersion": "discovery.k8s.io/v1"} if api_version else {}), "kind": "EndpointSlice",
            "addressType": family,
            "metadata": {"namespace": namespace, "name": name or f"{service}-x", "labels": {SERVICE_NAME: service}},
            "endpoints": [e if isinstance(e, dict) else endpoint(*((e,) if isinstance(e, str) else e))
                          for e in endpoints],
            "ports": [_port(p) for p in ports]}


def node(name: str, *internal_ips: str, external_ips=(), zone: str | None = None,
         pod_cidr: str | None = None) -> dict[str, Any]:
    """A Node with its InternalIP then ExternalIP addresses, topology zone label and podCIDR."""
    addresses = [{"type": "InternalIP", "address": ip} for ip in internal_ips]
    addresses += [{"type": "ExternalIP", "address": ip} for ip in external_ips]
    return {"kind": "Node",
            "metadata": {"name": name, **({"labels": {"topology.kubernetes.io/zone": zone}} if zone else {})},
            **({"spec": {"podCIDR": pod_cidr}} if pod_cidr else {}),
            **({"status": {"addresses": addresses}} if addresses else {})}


def replace_service(cluster, name: str, objects: list[dict[str, Any]]) -> dict[str, set[str]]:
    """In a parsed Cluster, replace service `name`'s Service and EndpointSlices (named "<name>-...")
    with `objects` (new instances, as a source writes them); return the change set a Store's
    follower would take (kind -> keys)."""
    from pyproxy.model import parse_objects

    fresh = parse_objects(objects)
    changes: dict[str, set[str]] = {}
    for table, kind in (("services", "Service"), ("slices", "EndpointSlice")):
        current = getattr(cluster, table)
        for key in [k for k in current if k.split("/")[1].split("-")[0] == name]:
            del current[key]
            changes.setdefault(kind, set()).add(key)
        current.update(getattr(fresh, table))
        changes.setdefault(kind, set()).update(getattr(fresh, table))
    return changes

"""The lab's stand-in for the control plane: Node objects for the lab nodes and an endpoints
controller that turns Services with selectors into EndpointSlices of the lab's pods."""

from __future__ import annotations

from typing import Any

from .lab import Lab, PodState


def node_objects(lab: Lab) -> list[dict[str, Any]]:
    v6 = lab.spec.ipv6
    return [{"apiVersion": "v1", "kind": "Node",
             "metadata": {"name": n.name, "labels": {"kubernetes.io/hostname": n.name}},
             "spec": {"podCIDR": str(n.pod_cidr), "podCIDRs": [str(n.pod_cidr)] + ([str(n.pod_cidr6)] if v6 else [])},
             "status": {"addresses": [{"type": "InternalIP", "address": str(n.ip)}]
                        + ([{"type": "InternalIP", "address": str(n.ip6)}] if v6 else [])}}
            for n in lab.spec.nodes]


def _selected(service: dict[str, Any], pod: PodState) -> bool:
    selector = (service.get("spec") or {}).get("selector")
    namespace = (service.get("metadata") or {}).get("namespace", "default")
    return bool(selector) and pod.namespace == namespace and all(pod.labels.get(k) == v for k, v in selector.items())


def endpoint_slice(service: dict[str, Any], pods: list[PodState],
                   conditions: dict[str, dict[str, bool]] | None = None, family: int = 4) -> dict[str, Any]:
    """The slice the EndpointSlice controller would write (targetPort must be a number)."""
    meta = service["metadata"]
    ports = []
    for p in service["spec"].get("ports", []):
        target = p.get("targetPort", p["port"])
        ports.append({"name": p.get("name", ""), "protocol": p.get("protocol", "TCP"), "port": int(target)})
    conditions = conditions or {}
    address = (lambda p: p.ip) if family == 4 else (lambda p: p.ip6)
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": f"IPv{family}",
        "metadata": {"namespace": meta.get("namespace", "default"), "name": f"{meta['name']}-lab" + ("-v6" if family == 6 else ""),
                     "labels": {"kubernetes.io/service-name": meta["name"]}},
        "endpoints": [{"addresses": [address(p)], "nodeName": p.node, "targetRef": {"kind": "Pod", "name": p.name},
                       "conditions": conditions.get(p.name, {"ready": True, "serving": True, "terminating": False})}
                      for p in sorted(pods, key=lambda p: p.name) if address(p)],
        "ports": ports,
    }


def cluster_objects(lab: Lab, services: list[dict[str, Any]],
                    conditions: dict[str, dict[str, bool]] | None = None) -> list[dict[str, Any]]:
    """Nodes, the services, and a slice for every service with a selector."""
    objs = node_objects(lab) + list(services)
    for svc in services:
        if (svc.get("spec") or {}).get("selector") is not None:
            selected = [p for p in lab.pods.values() if _selected(svc, p)]
            objs.append(endpoint_slice(svc, selected, conditions))
            if lab.spec.ipv6:
                objs.append(endpoint_slice(svc, selected, conditions, family=6))
    return objs

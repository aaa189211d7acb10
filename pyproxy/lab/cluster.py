"""The lab's stand-in for the control plane: Node objects for the lab nodes and an endpoints
controller that turns Services with selectors into EndpointSlices of the lab's pods."""

from __future__ import annotations

from typing import Any

from .lab import Lab, PodState


def node_objects(lab: Lab) -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": "Node",
             "metadata": {"name": n.name, "labels": {"kubernetes.io/hostname": n.name}},
             "spec": {"podCIDR": str(n.pod_cidr), "podCIDRs": [str(n.pod_cidr)]},
             "status": {"addresses": [{"type": "InternalIP", "address": str(n.ip)}]}}
            for n in lab.spec.nodes]


def _selected(service: dict[str, Any], pod: PodState) -> bool:
    selector = (service.get("spec") or {}).get("selector")
    namespace = (service.get("metadata") or {}).get("namespace", "default")
    return bool(selector) and pod.namespace == namespace and all(pod.labels.get(k) == v for k, v in selector.items())


def endpoint_slice(service: dict[str, Any], pods: list[PodState],
                   conditions: dict[str, dict[str, bool]] | None = None) -> dict[str, Any]:
    """The slice the EndpointSlice controller would write (targetPort must be a number)."""
    meta = service["metadata"]
    ports = []
    for p in service["spec"].get("ports", []):
        target = p.get("targetPort", p["port"])
        ports.append({"name": p.get("name", ""), "protocol": p.get("protocol", "TCP"), "port": int(target)})
    conditions = conditions or {}
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"namespace": meta.get("namespace", "default"), "name": f"{meta['name']}-lab",
                     "labels": {"kubernetes.io/service-name": meta["name"]}},
        "endpoints": [{"addresses": [p.ip], "nodeName": p.node, "targetRef": {"kind": "Pod", "name": p.name},
                       "conditions": conditions.get(p.name, {"ready": True, "serving": True, "terminating": False})}
                      for p in sorted(pods, key=lambda p: p.name)],
        "ports": ports,
    }


def cluster_objects(lab: Lab, services: list[dict[str, Any]],
                    conditions: dict[str, dict[str, bool]] | None = None) -> list[dict[str, Any]]:
    """Nodes, the services, and a slice for every service with a selector."""
    objs = node_objects(lab) + list(services)
    for svc in services:
        if (svc.get("spec") or {}).get("selector") is not None:
            objs.append(endpoint_slice(svc, [p for p in lab.pods.values() if _selected(svc, p)], conditions))
    return objs

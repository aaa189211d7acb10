"""What the lab writes to a real API server in the kubelet's place: Node objects with their
addresses and podCIDR, and for each lab pod a Pod bound to its node whose status (pod IPs, the
Ready condition) the lab sets after CNI ADD, so upstream's EndpointSlice controller does the rest."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from .spec import LabSpec, NodeSpec

PAUSE_IMAGE = "registry.k8s.io/pause:3.10"  # never pulled: no kubelet runs these pods


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_object(spec: LabSpec, node: NodeSpec) -> dict[str, Any]:
    cidrs = [str(node.pod_cidr)] + ([str(node.pod_cidr6)] if spec.ipv6 else [])
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name,
                                                       "kubernetes.io/os": "linux"}},
            "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs}}


def node_status(spec: LabSpec, node: NodeSpec) -> dict[str, Any]:
    addresses = [{"type": "InternalIP", "address": str(node.ip)}]
    if spec.ipv6:
        addresses.append({"type": "InternalIP", "address": str(node.ip6)})
    addresses.append({"type": "Hostname", "address": node.name})
    return {"addresses": addresses,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "the pyproxy lab plays the kubelet", "lastHeartbeatTime": now(),
                            "lastTransitionTime": now()}]}


def pod_object(name: str, namespace: str, node: str, labels: dict[str, str], ports: list[int]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 300,
                     "containers": [{"name": "echo", "image": PAUSE_IMAGE,
                                     "ports": [{"containerPort": p, "protocol": proto}
                                               for p in ports for proto in ("TCP", "UDP")]}]}}


def pod_status(ips: list[str], host_ip: str, ready: bool) -> dict[str, Any]:
    state = "True" if ready else "False"
    conditions = [{"type": kind, "status": "True", "lastTransitionTime": now()}
                  for kind in ("PodScheduled", "Initialized", "PodReadyToStartContainers")]
    conditions += [{"type": kind, "status": state, "lastTransitionTime": now()}
                   for kind in ("ContainersReady", "Ready")]
    return {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips], "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}], "startTime": now(), "conditions": conditions,
            "containerStatuses": [{"name": "echo", "ready": ready, "restartCount": 0, "image": PAUSE_IMAGE,
                                   "imageID": "", "started": True,
                                   "state": {"running": {"startedAt": now()}}}]}

"""The lab description: nodes with pod CIDRs, pods placed on nodes, the external client.

Addresses of the "physical" network are derived, not written: node i gets host i+10 of
`nodeNetwork`, the external client host 100. External and LoadBalancer IPs that tests use come
from `externalNetwork`, routed by the external client to the first node (as a router in front of
a cluster would).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
DEFAULT_PORTS = (80, 8080)


class SpecError(ValueError):
    pass


@dataclass(frozen=True)
class NodeSpec:
    name: str
    pod_cidr: ipaddress.IPv4Network
    ip: ipaddress.IPv4Address
    pod_cidr6: ipaddress.IPv6Network | None = None  # dual-stack labs only
    ip6: ipaddress.IPv6Address | None = None


@dataclass(frozen=True)
class PodSpec:
    name: str
    node: str
    ports: tuple[int, ...] = DEFAULT_PORTS
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    command: tuple[str, ...] = ()  # run instead of the echo server (started in the pod's namespace)


@dataclass(frozen=True)
class LabSpec:
    name: str
    node_network: ipaddress.IPv4Network
    external_network: ipaddress.IPv4Network
    nodes: tuple[NodeSpec, ...]
    pods: tuple[PodSpec, ...]
    cluster_cidr: ipaddress.IPv4Network
    ipv6: bool = False  # dual stack: every node, pod and the external client get IPv6 too
    # "none": the lab's stand-ins (objects written by tests); "kubernetes": upstream's etcd,
    # kube-apiserver and kube-controller-manager in the lab (lab/controlplane.py)
    control_plane: str = "none"
    service_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.96.0.0/16")

    NODE_NETWORK6 = ipaddress.IPv6Network("fd00:172:18::/64")
    SERVICE_CIDR6 = ipaddress.IPv6Network("fd00:10:96::/112")
    EXTERNAL_NETWORK6 = ipaddress.IPv6Network("fd00:172:18:100::/64")
    CLUSTER_CIDR6 = ipaddress.IPv6Network("fd00:10:244::/48")

    @property
    def external_ip(self) -> ipaddress.IPv4Address:
        return self.node_network.network_address + 100

    @property
    def control_plane_ip(self) -> ipaddress.IPv4Address:
        return self.node_network.network_address + 2

    @property
    def external_ip6(self) -> ipaddress.IPv6Address:
        return self.NODE_NETWORK6.network_address + 0x100

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise SpecError(f"{where}: {value!r} is not a valid name (lowercase letters, digits, '-', at most 32)")
    return value


def parse_spec(raw: Any) -> LabSpec:
    if not isinstance(raw, dict):
        raise SpecError("lab: expected a mapping")
    name = _name(raw.get("name", "lab"), "name")
    if len(name) > 8:
        raise SpecError(f"name: {name!r} is longer than 8 characters (it prefixes interface names)")
    try:
        node_net = ipaddress.IPv4Network(raw.get("nodeNetwork", "172.18.0.0/24"))
        ext_net = ipaddress.IPv4Network(raw.get("externalNetwork", "172.18.100.0/24"))
        cluster = ipaddress.IPv4Network(raw.get("clusterCIDR", "10.244.0.0/16"))
        service_cidr = ipaddress.IPv4Network(raw.get("serviceCIDR", "10.96.0.0/16"))
    except ValueError as err:
        raise SpecError(f"network: {err}") from None
    nodes = []
    for i, item in enumerate(raw.get("nodes") or []):
        where = f"nodes[{i}]"
        if not isinstance(item, dict):
            raise SpecError(f"{where}: expected a mapping")
        try:
            cidr = ipaddress.IPv4Network(item.get("podCIDR", ""))
        except ValueError as err:
            raise SpecError(f"{where}.podCIDR: {err}") from None
        if not cidr.subnet_of(cluster):
            raise SpecError(f"{where}.podCIDR: {cidr} is outside clusterCIDR {cluster}")
        nodes.append(NodeSpec(_name(item.get("name"), f"{where}.name"), cidr, node_net.network_address + 11 + i,
                              ipaddress.IPv6Network(f"fd00:10:244:{i + 1}::/64"),
                              LabSpec.NODE_NETWORK6.network_address + 0x11 + i))
    if not nodes:
        raise SpecError("nodes: a lab needs at least one node")
    node_names = {n.name for n in nodes}
    if len(node_names) != len(nodes):
        raise SpecError("nodes: names must be unique")
    pods = []
    for i, item in enumerate(raw.get("pods") or []):
        where = f"pods[{i}]"
        if not isinstance(item, dict):
            raise SpecError(f"{where}: expected a mapping")
        node = item.get("node")
        if node not in node_names:
            raise SpecError(f"{where}.node: unknown node {node!r}")
        ports = tuple(item.get("ports") or DEFAULT_PORTS)
        if not all(isinstance(p, int) and 0 < p < 65536 for p in ports):
            raise SpecError(f"{where}.ports: expected port numbers")
        command = item.get("command") or ()
        if not isinstance(command, (list, tuple)) or not all(isinstance(c, str) for c in command):
            raise SpecError(f"{where}.command: expected a list of strings")
        pods.append(PodSpec(_name(item.get("name"), f"{where}.name"), node, ports,
                            item.get("namespace", "default"), dict(item.get("labels") or {}), tuple(command)))
    if len({p.name for p in pods}) != len(pods):
        raise SpecError("pods: names must be unique")
    ipv6 = raw.get("ipv6", False)
    if not isinstance(ipv6, bool):
        raise SpecError(f"ipv6: expected true or false, got {ipv6!r}")
    control_plane = raw.get("controlPlane", "none")
    if control_plane not in ("none", "kubernetes"):
        raise SpecError(f"controlPlane: expected none or kubernetes, got {control_plane!r}")
    return LabSpec(name, node_net, ext_net, tuple(nodes), tuple(pods), cluster, ipv6, control_plane, service_cidr)


def spec_as_raw(spec: LabSpec) -> dict[str, Any]:
    """The lab file that parses back to `spec` (what `lab status` and `lab down` reload)."""
    return {"name": spec.name, "nodeNetwork": str(spec.node_network), "externalNetwork": str(spec.external_network),
            "clusterCIDR": str(spec.cluster_cidr), "serviceCIDR": str(spec.service_cidr), "ipv6": spec.ipv6,
            "controlPlane": spec.control_plane,
            "nodes": [{"name": n.name, "podCIDR": str(n.pod_cidr)} for n in spec.nodes],
            "pods": [{"name": p.name, "node": p.node, "ports": list(p.ports), "namespace": p.namespace,
                      "labels": dict(p.labels), **({"command": list(p.command)} if p.command else {})}
                     for p in spec.pods]}


def load_spec(path: str) -> LabSpec:
    with open(path) as f:
        return parse_spec(yaml.safe_load(f))


DEFAULT_SPEC = {
    "name": "demo",
    "nodes": [{"name": "node1", "podCIDR": "10.244.1.0/24"}, {"name": "node2", "podCIDR": "10.244.2.0/24"}],
    "pods": [
        {"name": "web-1", "node": "node1", "labels": {"app": "web"}},
        {"name": "web-2", "node": "node2", "labels": {"app": "web"}},
        {"name": "client-1", "node": "node1", "labels": {"app": "client"}},
        {"name": "client-2", "node": "node2", "labels": {"app": "client"}},
    ],
}

"""The API objects pyproxy needs, as frozen values (only the fields that change behaviour).

Invariant: every value here has been validated by `parse`: addresses are ipaddress objects,
protocols are "TCP"/"UDP"/"SCTP", ports are in range. Code downstream never re-validates.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SERVICE_LABEL_PREFIX = "service.kubernetes.io/"  # the only Service labels the model keeps
SERVICE_PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TOPOLOGY_MODE_ANNOTATION = "service.kubernetes.io/topology-mode"
TOPOLOGY_HINTS_ANNOTATION = "service.kubernetes.io/topology-aware-hints"  # deprecated spelling
TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
ZONE_LABEL = "topology.kubernetes.io/zone"


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    protocol: str
    port: int
    node_port: int = 0


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    type: str = "ClusterIP"
    cluster_ips: tuple[IPAddress, ...] = ()  # empty for headless and ExternalName
    headless: bool = False
    ports: tuple[ServicePort, ...] = ()
    external_ips: tuple[IPAddress, ...] = ()
    load_balancer_ips: tuple[IPAddress, ...] = ()
    load_balancer_source_ranges: tuple[IPNetwork, ...] = ()
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    health_check_node_port: int = 0
    session_affinity_timeout: int = 0  # 0: no ClientIP affinity
    traffic_distribution: str = ""
    topology_mode: str = ""  # the topology-mode annotation, lowercased
    publish_not_ready_addresses: bool = False
    external_name: str = ""
    labels: tuple[tuple[str, str], ...] = ()  # those under SERVICE_LABEL_PREFIX

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def label(self, name: str) -> str | None:
        return dict(self.labels).get(name)


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[IPAddress, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str = ""
    zone: str = ""
    hostname: str = ""
    hint_zones: tuple[str, ...] = ()
    hint_nodes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str
    protocol: str
    port: int


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str
    address_type: str  # IPv4, IPv6 (FQDN slices are skipped at parse time)
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[EndpointPort, ...] = ()
    trigger_time: str = ""

    @property
    def service_key(self) -> str:
        return f"{self.namespace}/{self.service_name}"


@dataclass(frozen=True, slots=True)
class ServiceCIDR:
    """networking.k8s.io/v1 ServiceCIDR: ranges the API server allocates ClusterIPs from."""

    name: str
    cidrs: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    addresses: tuple[IPAddress, ...] = ()
    pod_cidrs: tuple[IPNetwork, ...] = ()
    labels: tuple[tuple[str, str], ...] = field(default=())
    deleting: bool = False

    def label(self, name: str) -> str | None:
        return dict(self.labels).get(name)

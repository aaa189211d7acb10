"""The cluster state one node cares about: services, slices and nodes by key, and the errors of
the objects that could not be read. Sources fill it; the view reads it."""

from __future__ import annotations

from dataclasses import dataclass, field

from .types import EndpointSlice, Node, Service, ServiceCIDR


@dataclass
class Cluster:
    """The state of the cluster as far as one node cares: services, slices, nodes by key."""

    services: dict[str, Service] = field(default_factory=dict)
    slices: dict[str, EndpointSlice] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    service_cidrs: dict[str, ServiceCIDR] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, obj: Service | EndpointSlice | Node | ServiceCIDR) -> None:
        if isinstance(obj, Service):
            self.services[obj.key] = obj
        elif isinstance(obj, EndpointSlice):
            self.slices[f"{obj.namespace}/{obj.name}"] = obj
        elif isinstance(obj, ServiceCIDR):
            self.service_cidrs[obj.name] = obj
        else:
            self.nodes[obj.name] = obj

    def service_ranges(self, family: int) -> tuple:
        """Every ServiceCIDR range of this family (kube-proxy's union of their spec.cidrs), sorted."""
        return tuple(sorted({c for s in self.service_cidrs.values() for c in s.cidrs if c.version == family}))

    def slices_by_service(self) -> dict[str, list[EndpointSlice]]:
        out: dict[str, list[EndpointSlice]] = {}
        for key in sorted(self.slices):  # a stable order, so equal states give equal views
            s = self.slices[key]
            out.setdefault(s.service_key, []).append(s)
        return out

"""Run pyproxy's dataplane on every lab node, in-process: each sync enters the node's namespace
(pyproxy.netns), so iptables-restore and conntrack run there and nowhere else."""

from __future__ import annotations

from typing import Any

from .. import netns
from ..config import ProxyConfig
from ..model import parse_objects
from ..proxier import Proxier, SyncReport
from .cluster import cluster_objects
from .lab import Lab


class LabDataplane:
    def __init__(self, lab: Lab, config: ProxyConfig | None = None) -> None:
        self.lab = lab
        cidrs = (lab.spec.cluster_cidr,) + ((lab.spec.CLUSTER_CIDR6,) if lab.spec.ipv6 else ())
        self.config = config or ProxyConfig(cluster_cidrs=cidrs)
        families = (4, 6) if lab.spec.ipv6 else (4,)
        self.proxiers: dict[str, Proxier] = {}
        for node in lab.spec.nodes:
            with netns.entered(lab.node_ns(node.name)):
                self.proxiers[node.name] = Proxier(node.name, self.config, families)

    def apply(self, services: list[dict[str, Any]], extra: list[dict[str, Any]] = (),
              conditions: dict[str, dict[str, bool]] | None = None, full: bool = False) -> dict[str, SyncReport]:
        """Program every node for these services (slices made from the lab's pods) plus `extra`."""
        objects = cluster_objects(self.lab, services, conditions) + list(extra)
        return self.apply_objects(objects, full)

    def apply_objects(self, objects: list[dict[str, Any]], full: bool = False) -> dict[str, SyncReport]:
        cluster = parse_objects(objects)
        if cluster.errors:
            raise ValueError("; ".join(cluster.errors))
        reports = {}
        for name, proxier in self.proxiers.items():
            with netns.entered(self.lab.node_ns(name)):
                reports[name] = proxier.sync(cluster, full=full)
        return reports

    def cleanup(self) -> None:
        for name, proxier in self.proxiers.items():
            with netns.entered(self.lab.node_ns(name)):
                proxier.cleanup()

"""DNS in the lab: the responder runs on a node (listening inside the node's namespace) and pods
resolve the cluster zone through it at their gateway address."""

from __future__ import annotations

import socket
from typing import Any

import dns.message
import dns.query

from .. import netns
from ..dns.server import DnsServer, Responder
from ..dns.zone import build_zone
from ..model import parse_objects
from .cluster import cluster_objects
from .lab import Lab


def start_dns(lab: Lab, services: list[dict[str, Any]], node: str | None = None) -> DnsServer:
    node = node or lab.spec.nodes[0].name
    responder = Responder(build_zone(parse_objects(cluster_objects(lab, services))))
    with netns.entered(lab.node_ns(node)):
        return DnsServer(responder, "0.0.0.0", 53).start()


def resolver_for(lab: Lab, pod: str) -> str:
    """A pod's resolver address: the gateway of its node's pod network (the cni0 bridge)."""
    return str(lab.spec.node(lab.pods[pod].node).pod_cidr.network_address + 1)


def resolve(lab: Lab, pod: str, name: str, rdtype: str = "A", server: str | None = None) -> list[str]:
    with netns.entered(lab.pods[pod].netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        reply = dns.query.udp(dns.message.make_query(name, rdtype), server or resolver_for(lab, pod), timeout=2,
                              sock=sock)
    return sorted(rd.to_text() for rr in reply.answer for rd in rr)

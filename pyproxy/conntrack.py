"""Stale UDP conntrack entries: the reason DNS blackholes after a CoreDNS pod restarts.

UDP has no connection end, so the kernel keeps sending a client's datagrams to the endpoint it
picked first, even after that endpoint is gone, until the entry times out. After every sync we
look at the UDP entries that belong to a service frontend and delete exactly the stale ones:

* DNAT'ed to an address that is no longer an endpoint of that service port;
* not DNAT'ed at all, for a service port that now has endpoints (a flow that met "no
  endpoints" would otherwise stay unanswered).

Nothing else is touched: a restart re-checks every entry instead of flushing all UDP flows.
The decision (`stale_flows`) is pure; `ConntrackCleaner` only lists and deletes.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from .view import NodeView

_FIELD = re.compile(r"(src|dst|sport|dport)=(\S+)")


@dataclass(frozen=True)
class Flow:
    orig_src: str
    orig_dst: str
    orig_sport: int
    orig_dport: int
    reply_src: str
    reply_sport: int


def parse_flows(text: str) -> list[Flow]:
    flows = []
    for line in text.splitlines():
        fields = _FIELD.findall(line)
        if len(fields) < 8:
            continue
        (_, s), (_, d), (_, sp), (_, dp), (_, rs), _, (_, rsp), _ = fields[:8]
        try:
            flows.append(Flow(s, d, int(sp), int(dp), rs, int(rsp)))
        except ValueError:
            continue
    return flows


def stale_flows(view: NodeView, flows: list[Flow], family: int) -> list[Flow]:
    """The UDP flows to a service frontend whose destination is no longer right."""
    frontends: dict[tuple[str, int], set[tuple[str, int]]] = {}
    node_ports: dict[int, set[tuple[str, int]]] = {}
    for sp in view.family(family):
        if sp.protocol != "UDP":
            continue
        targets = {(str(ep.ip), ep.port) for ep in sp.reachable_endpoints} if sp.has_endpoints else set()
        for ip in (sp.cluster_ip, *sp.external_ips, *sp.load_balancer_ips):
            frontends[(str(ip), sp.port)] = targets
        if sp.node_port:
            node_ports[sp.node_port] = targets
    node_ips = {str(ip) for ip in view.node_ips_of(family)}
    stale = []
    for flow in flows:
        targets = frontends.get((flow.orig_dst, flow.orig_dport))
        if targets is None and flow.orig_dst in node_ips:
            targets = node_ports.get(flow.orig_dport)
        if targets is None:
            continue
        dnatted = flow.reply_src != flow.orig_dst
        if dnatted and (flow.reply_src, flow.reply_sport) not in targets:
            stale.append(flow)
        elif not dnatted and targets:
            stale.append(flow)
    return stale


class ConntrackCleaner:
    def __init__(self, family: int = 4) -> None:
        self.family = family
        self._udp_ports: dict[str, object] | None = None  # the UDP ports seen at the last clean

    def _udp_unchanged(self, view: NodeView) -> bool:
        """Flows go stale only when a UDP port's view changes; views are the same objects while
        nothing changed, so most syncs skip listing the conntrack table (~10 ms) altogether."""
        ports = {sp.key: sp for sp in view.family(self.family) if sp.protocol == "UDP"}
        old, self._udp_ports = self._udp_ports, ports
        return old is not None and old.keys() == ports.keys() and all(old[k] is sp for k, sp in ports.items())

    def list_udp(self) -> list[Flow]:
        family = "ipv4" if self.family == 4 else "ipv6"
        proc = subprocess.run(["conntrack", "-L", "-f", family, "-p", "udp"], capture_output=True, text=True)
        return parse_flows(proc.stdout)

    def clean(self, view: NodeView) -> int:
        if self._udp_unchanged(view):
            return 0
        stale = stale_flows(view, self.list_udp(), self.family)
        for flow in stale:
            subprocess.run(["conntrack", "-D", "-p", "udp", "--orig-src", flow.orig_src, "--orig-dst", flow.orig_dst,
                            "--orig-port-src", str(flow.orig_sport), "--orig-port-dst", str(flow.orig_dport)],
                           capture_output=True)
        return len(stale)

"""Stale UDP conntrack entries: the reason DNS blackholes after a CoreDNS pod restarts.

UDP has no connection end, so the kernel keeps sending a client's datagrams to the endpoint it
picked first, even after that endpoint is gone, until the entry times out. After every sync we
look at the UDP entries that belong to a service frontend and delete exactly the stale ones:

* DNAT'ed to an address that is no longer an endpoint of that service port;
* not DNAT'ed at all, for a service port that now has endpoints (a flow that met "no
  endpoints" would otherwise stay unanswered).

Nothing else is touched: a restart re-checks every entry instead of flushing all UDP flows.
The decision (`stale_flows`) is pure; `ConntrackCleaner` only lists and deletes, over netlink
(pyproxy/netlink/conntrack.py: filtered dumps, batched deletes; no `conntrack` process per flow).
After a change of a few endpoints it asks the kernel only for the flows answered from the
addresses that change can have made stale (`suspect_addresses`): the kernel builds no message
for the rest of the table, most of a whole dump's cost. A full sync, a restart and a failed
clean look at every UDP flow. A delete that fails is retried at the next sync.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterable

from .model.types import IPAddress
from .netlink.conntrack import Conntrack, ConntrackError
from .view import NodeView, PortFollower, ServicePortView

@dataclass(frozen=True)
class Flow:
    orig_src: str
    orig_dst: str
    orig_sport: int
    orig_dport: int
    reply_src: str
    reply_sport: int


class StaleRule:
    """stale_flows's decision for one flow on packed addresses: ConntrackCleaner hands it to the
    netlink dump, so only stale flows ever become Python objects."""

    def __init__(self, udp_ports: Iterable[ServicePortView], node_ips: Iterable[IPAddress]) -> None:
        """`udp_ports`: the UDP service ports of one family (a partial sync's cleaner hands those it
        follows, so building this walks no other port)."""
        import ipaddress

        packed = lambda ip: ipaddress.ip_address(ip).packed  # noqa: E731
        self.frontends: dict[tuple[bytes, int], set[tuple[bytes, int]]] = {}
        self.node_ports: dict[int, set[tuple[bytes, int]]] = {}
        for sp in udp_ports:
            targets = {(ep.ip.packed, ep.port) for ep in sp.reachable_endpoints} if sp.has_endpoints else set()
            for ip in (sp.cluster_ip, *sp.external_ips, *sp.load_balancer_ips):
                self.frontends[(packed(ip), sp.port)] = targets
            if sp.node_port:
                self.node_ports[sp.node_port] = targets
        self.node_ips = {packed(ip) for ip in node_ips}

    @classmethod
    def of(cls, view: NodeView, family: int) -> "StaleRule":
        return cls((sp for sp in view.family(family) if sp.protocol == "UDP"), view.node_ips_of(family))

    def __call__(self, orig_src: bytes, orig_dst: bytes, orig_sport: int, orig_dport: int, reply_src: bytes,
                 reply_sport: int) -> bool:
        targets = self.frontends.get((orig_dst, orig_dport))
        if targets is None and orig_dst in self.node_ips:
            targets = self.node_ports.get(orig_dport)
        if targets is None:
            return False
        if reply_src != orig_dst:  # DNAT'ed: stale when it points at what is no longer an endpoint
            return (reply_src, reply_sport) not in targets
        return bool(targets)  # met "no endpoints" while there are some now


TARGETED_ADDRESSES = 16  # more suspects than this: one dump of the whole table is cheaper


def suspect_addresses(old: dict, new: dict, node_ips) -> set[str]:
    """The reply sources a flow made stale by this change can have, from the UDP service ports
    before (`old`) and after (`new`), by key: the endpoints a port lost or a port that went had
    (a flow DNAT'ed to one), and the frontends of ports that have endpoints now and had none or
    did not exist (an un-NATed flow is answered from the frontend itself, a NodePort's from the
    node's address)."""
    out: set[str] = set()
    for key, before in old.items():
        after = new.get(key)
        if after is before:
            continue
        kept = {(ep.ip, ep.port) for ep in after.reachable_endpoints} if after is not None and after.has_endpoints \
            else set()
        out.update(str(ep.ip) for ep in before.reachable_endpoints if (ep.ip, ep.port) not in kept)
    for key, after in new.items():
        before = old.get(key)
        if after is before or not after.has_endpoints or (before is not None and before.has_endpoints):
            continue
        out.update(str(ip) for ip in (after.cluster_ip, *after.external_ips, *after.load_balancer_ips))
        if after.node_port:
            out.update(str(ip) for ip in node_ips)
    return out


def stale_flows(view: NodeView, flows: list[Flow], family: int) -> list[Flow]:
    """The UDP flows to a service frontend whose destination is no longer right."""
    import ipaddress

    rule = StaleRule.of(view, family)
    packed = lambda ip: ipaddress.ip_address(ip).packed  # noqa: E731
    return [f for f in flows if rule(packed(f.orig_src), packed(f.orig_dst), f.orig_sport, f.orig_dport,
                                     packed(f.reply_src), f.reply_sport)]


log = logging.getLogger("pyproxy.conntrack")


class ConntrackCleaner:
    def __init__(self, family: int = 4) -> None:
        self.family = family
        self._udp = PortFollower(lambda sp: sp.family == family and sp.protocol == "UDP")  # as at the last clean
        self._socket: tuple[int, Conntrack] | None = None  # per network namespace, kept open

    def _suspects(self, view: NodeView, full: bool) -> set[str] | None:
        """The addresses to ask the kernel about (see suspect_addresses), an empty set when no
        UDP port's view changed (views are the same objects while nothing changed, so most syncs
        list nothing), None for every UDP flow."""
        moved = self._udp.follow(view)
        if full or moved is None:
            return None
        old, ports = moved
        suspects = suspect_addresses(old, ports, view.node_ips_of(self.family))
        return suspects if len(suspects) <= TARGETED_ADDRESSES else None

    def _conntrack(self) -> Conntrack:
        """The ctnetlink socket of the namespace this thread is in (opened once per namespace)."""
        here = os.stat("/proc/thread-self/ns/net").st_ino
        if self._socket is None or self._socket[0] != here:
            if self._socket is not None:
                self._socket[1].close()
            self._socket = (here, Conntrack())
        return self._socket[1]

    def list_udp(self) -> list[Flow]:
        return [Flow(o[0], o[1], o[2], o[3], r[0], r[2]) for o, r in self._conntrack().flows(self.family, "udp")]

    def clean(self, view: NodeView, full: bool = False) -> int:
        suspects = self._suspects(view, full)
        if suspects is not None and not suspects:
            return 0
        try:
            ct = self._conntrack()
            rule = StaleRule(self._udp.ports.values(), view.node_ips_of(self.family))
            if suspects is None:
                stale = ct.flows(self.family, "udp", rule)
            else:
                stale = [flow for ip in sorted(suspects) for flow in ct.flows(self.family, "udp", rule, reply_src=ip)]
            return ct.delete([orig for orig, _ in stale], self.family, "udp")
        except (ConntrackError, OSError) as err:
            self._udp.forget()  # check everything again at the next sync
            log.warning("stale UDP flows not cleaned (retried at the next sync): %s", err)
            return 0

"""Follow a new connection through a rendered NftRuleset as the kernel would, without a kernel.

The walk takes the hooks of our table in priority order (filter at -110, nat at -100, the
post-DNAT output filter at -90, postrouting), looks the packet up in the verdict maps and
interprets the rules of the chains it reaches: the forms render.py writes, nothing more. A
`numgen random mod N` forks the walk into N equally likely outcomes; ClientIP affinity is taken
as "no earlier connection from this client".

Invariant: pure; reads only the ruleset and the packet. Outcomes use the iptables tracer's types.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import replace

from ..tracing import Outcome, Packet
from .render import NftRuleset

_SET = re.compile(r"\{ ([^}]*) \}")
_VMAP_ENTRY = re.compile(r"(\d+) : goto (\S+?)(?:,|$)")
_NUMGEN_MAP = re.compile(r"dnat ip6? to numgen random mod (\d+) offset (\d+) map @(\S+)")
_DNAT = re.compile(r"dnat ip6? to (\[?[0-9a-fA-F.:]+\]?):(\d+)$")


class NftTracer:
    def __init__(self, ruleset: NftRuleset, node_ips: list[str], nodeport_ips: list[str] | None = None,
                 service_ranges: tuple = ()) -> None:
        self.ip = "ip" if ruleset.family == 4 else "ip6"
        self.service_ranges = service_ranges
        self.elements = ruleset.all_elements()
        self.chains = {name: rules for svc in ruleset.services.values() for name, rules in svc.chains.items()}
        self.node_ips = set(node_ips)
        self.nodeport_ips = set(nodeport_ips) if nodeport_ips is not None else None
        self.loopback = ipaddress.ip_network("127.0.0.0/8" if ruleset.family == 4 else "::1/128")

    # -- the walk ----------------------------------------------------------------------------------

    def trace(self, packet: Packet) -> list[Outcome]:
        start = Outcome("ACCEPT", 1.0, packet, [])
        out = []
        for o in self._filter_first(start):
            for n in self._nat(o):
                for f in self._filter_after(n):
                    out.append(self._postrouting(f))
        return out

    def _key(self, p: Packet) -> str:
        return f"{p.dst} . {p.proto} . {p.dport}"

    def _is_nodeport_address(self, p: Packet) -> bool:
        if self.nodeport_ips is not None:
            return p.dst in self.nodeport_ips
        return p.dst in self.node_ips and ipaddress.ip_address(p.dst) not in self.loopback

    def _verdict_map(self, o: Outcome, name: str, key: str, where: str) -> list[Outcome]:
        """A `vmap @name` lookup: no entry continues; `goto chain` runs it; drop/reject end the walk."""
        value = self.elements.get(name, {}).get(key)
        if value is None:
            return [o]
        o = replace(o, rules=o.rules + [f"{where}: {key} vmap @{name} -> {value}"])
        if value == "drop":
            return [replace(o, verdict="DROP")]
        return self._chain(o, value.split()[1])

    def _filter_first(self, o: Outcome) -> list[Outcome]:
        """Before DNAT (filter-prerouting, or filter-output for the node's own traffic): firewall-ips."""
        hook = "filter-output" if o.packet.local_origin else "filter-prerouting"
        return self._verdict_map(o, "firewall-ips", self._key(o.packet), hook)

    def _nat(self, o: Outcome) -> list[Outcome]:
        if o.verdict != "ACCEPT":
            return [o]
        hook = "nat-output" if o.packet.local_origin else "nat-prerouting"
        found = self._verdict_map(o, "service-ips", self._key(o.packet), f"{hook} services")
        if found != [o]:
            return found
        if self._is_nodeport_address(o.packet):
            return self._verdict_map(o, "service-nodeports", f"{o.packet.proto} . {o.packet.dport}", f"{hook} services")
        return [o]

    def _filter_after(self, o: Outcome) -> list[Outcome]:
        """After DNAT: no-endpoint checks, and REJECT for unknown ports of cluster IPs."""
        if o.verdict != "ACCEPT" or o.packet.dnat is not None:
            return [o]
        p = o.packet
        hook = ("filter-output-post-dnat" if p.local_origin else
                "filter-input" if p.dst in self.node_ips else "filter-forward")
        outs = self._verdict_map(o, "no-endpoint-services", self._key(p), hook)
        if hook == "filter-input" and outs == [o]:
            outs = self._verdict_map(o, "no-endpoint-nodeports", f"{p.proto} . {p.dport}", hook)
        if outs == [o] and hook != "filter-input":
            if p.dst in self.elements.get("cluster-ips", {}):
                return [replace(o, verdict="REJECT", rules=o.rules + [f"{hook} cluster-ips-check: {p.dst} reject"])]
            if any(ipaddress.ip_address(p.dst) in cidr for cidr in self.service_ranges):
                return [replace(o, verdict="DROP", rules=o.rules + [
                    f"{hook} cluster-ips-check: {p.dst} in a ServiceCIDR, no Service holds it: drop"])]
        return outs

    def _postrouting(self, o: Outcome) -> Outcome:
        if o.verdict != "ACCEPT" or o.packet.dnat is None:
            return o
        pair = f"{o.packet.src} . {o.packet.dnat[0]}"
        if pair in self.elements.get("hairpin", {}):
            o = replace(o, packet=replace(o.packet, masquerade=True),
                        rules=o.rules + [f"nat-postrouting: {pair} @hairpin jump mark-for-masquerade"])
        if o.packet.masquerade:
            o = replace(o, rules=o.rules + ["masquerading: masquerade fully-random"])
        return o

    # -- one chain -----------------------------------------------------------------------------------

    def _chain(self, o: Outcome, chain: str) -> list[Outcome]:
        if chain == "reject-chain":
            return [replace(o, verdict="REJECT", rules=o.rules + ["reject-chain: reject"])]
        for rule in self.chains.get(chain, []):
            matched, action = self._match(rule, o.packet)
            if not matched:
                continue
            o = replace(o, rules=o.rules + [f"{chain}: {rule}"])
            if action == "jump mark-for-masquerade":
                o = replace(o, packet=replace(o.packet, masquerade=True))
            elif action.startswith("goto "):
                return self._chain(o, action.split()[1])
            elif action == "drop":
                return [replace(o, verdict="DROP")]
            elif (m := _NUMGEN_MAP.search(action)) is not None:
                n, base, name = int(m.group(1)), int(m.group(2)), m.group(3)
                outs = []
                for i in range(n):
                    target = self.elements.get(name, {}).get(str(base + i), "")
                    ip, _, port = target.partition(" . ")
                    outs.append(replace(o, probability=o.probability / n,
                                        packet=replace(o.packet, dnat=(ip, int(port))),
                                        rules=o.rules + [f"  numgen {i} -> @{name} {base + i} : {target}"]))
                return outs
            elif action.startswith("numgen random mod"):
                entries = _VMAP_ENTRY.findall(_SET.search(action).group(1).replace(", ", ","))
                return [x for _, c in entries
                        for x in self._chain(replace(o, probability=o.probability / len(entries)), c)]
            elif (m := _DNAT.search(action)) is not None:
                return [replace(o, packet=replace(o.packet, dnat=(m.group(1).strip("[]"), int(m.group(2)))))]
        return [o]

    def _match(self, rule: str, p: Packet) -> tuple[bool, str]:
        """(whether every match of the rule holds, the rule's action)."""
        words = rule.split()
        i = 0
        ip = self.ip
        while i < len(words):
            w = words[i]
            if w in (ip, "tcp", "udp", "sctp") and i + 1 < len(words) and words[i + 1] in ("saddr", "daddr", "dport"):
                if w != ip and w != p.proto:
                    return False, ""
                field, i = words[i + 1], i + 2
                negate = words[i] == "!="
                i += negate
                if words[i] == "{":
                    end = words.index("}", i)
                    values, i = " ".join(words[i + 1:end]).replace(",", " ").split(), end + 1
                else:
                    values, i = [words[i]], i + 1
                actual = {"saddr": p.src, "daddr": p.dst, "dport": str(p.dport)}[field]
                if values[0].startswith("@"):
                    hit = False  # affinity sets: no earlier connection from this client
                else:
                    hit = any(_contains(v, actual) for v in values)
                if hit == negate:
                    return False, ""
            elif w == "meta" and words[i + 1] == "l4proto" and words[i + 2] in ("tcp", "udp", "sctp"):
                if words[i + 2] != p.proto:
                    return False, ""
                i += 3
            elif w == "iifname":
                negate = words[i + 1] == "!="
                pattern = words[i + 1 + negate].strip('"')
                hit = p.in_iface.startswith(pattern[:-1]) if pattern.endswith("*") else p.in_iface == pattern
                if hit == negate:
                    return False, ""
                i += 2 + negate
            elif words[i:i + 4] == ["fib", "saddr", "type", "local"]:
                if not (p.local_origin or p.src in self.node_ips):
                    return False, ""
                i += 4
            elif w == "update":
                i = words.index("}", i) + 1  # affinity bookkeeping: no effect on the walk
            else:
                return True, " ".join(words[i:])
        return True, ""


def _contains(value: str, actual: str) -> bool:
    if "/" in value:
        return ipaddress.ip_address(actual) in ipaddress.ip_network(value)
    return value == actual

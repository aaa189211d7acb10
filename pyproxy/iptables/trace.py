"""Follow a packet through a rendered Ruleset the way netfilter would, without a kernel.

The walk visits the hooks a new connection crosses (nat PREROUTING or OUTPUT, then filter INPUT,
FORWARD or OUTPUT after the routing decision, then nat POSTROUTING) and, in each, the jumps into
our chains in the order they sit in the built-in chain. A `statistic` rule forks the walk: each
branch is one possible outcome with its probability. `recent --rcheck` (session affinity) is
taken as "no earlier connection from this client", i.e. the first connection.

Invariant: pure; reads only the Ruleset and the packet.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, replace
from typing import Iterator

from ..tracing import Outcome, Packet
from .render import Ruleset


@dataclass
class Rule:
    chain: str
    text: str
    checks: list[tuple[str, bool, list[str]]]  # (option, negated, values)
    target: str
    target_args: dict[str, str]


def parse_rule(line: str) -> Rule:
    words = shlex.split(line)
    chain = words[1]
    checks: list[tuple[str, bool, list[str]]] = []
    target, target_args = "", {}
    i, negate = 2, False
    while i < len(words):
        word = words[i]
        if word == "!":
            negate = True
            i += 1
            continue
        if word == "-j":
            target = words[i + 1]
            rest = words[i + 2:]
            for k in range(0, len(rest), 2):
                target_args[rest[k]] = rest[k + 1] if k + 1 < len(rest) else ""
            break
        if word == "-m":
            i += 2
            continue
        values = []
        i += 1
        while i < len(words) and not words[i].startswith("-") and words[i] != "!":
            values.append(words[i])
            i += 1
        checks.append((word, negate, values))
        negate = False
    return Rule(chain, line, checks, target, target_args)


class Tracer:
    def __init__(self, ruleset: Ruleset, node_ips: list[str]) -> None:
        self.ruleset = ruleset
        self.node_ips = {ipaddress.ip_address(ip) for ip in node_ips}
        self.chains: dict[tuple[str, str], list[Rule]] = {}
        for (table, chain), lines in ruleset.shared.items():
            self.chains[(table, chain)] = [parse_rule(line) for line in lines]
        for name, lines in ruleset.service_chains().items():
            self.chains[("nat", name)] = [parse_rule(line) for line in lines]
        for base in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"):
            for table in ("nat", "filter"):
                jumps = [j for j in ruleset.jumps if j.table == table and j.chain == base]
                self.chains[(table, base)] = [parse_rule(f"-A {base} {j.rule()}") for j in reversed(jumps)]

    # -- matching -----------------------------------------------------------------------------------

    def is_local(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return addr in self.node_ips or addr.is_loopback

    def _check(self, option: str, values: list[str], pkt: Packet) -> bool | float:
        dst = pkt.dnat[0] if pkt.dnat else pkt.dst
        dport = pkt.dnat[1] if pkt.dnat else pkt.dport
        if option == "-s":
            return ipaddress.ip_address(pkt.src) in ipaddress.ip_network(values[0], strict=False)
        if option == "-d":
            return ipaddress.ip_address(dst) in ipaddress.ip_network(values[0], strict=False)
        if option == "-p":
            return values[0] == pkt.proto
        if option == "--dport":
            return int(values[0]) == dport
        if option == "-i":
            name = values[0]
            return pkt.in_iface.startswith(name[:-1]) if name.endswith("+") else pkt.in_iface == name
        if option == "--dst-type":
            return self.is_local(dst)
        if option == "--src-type":
            return self.is_local(pkt.src)
        if option == "--mark":
            value, _, mask = values[0].partition("/")
            return pkt.mark & int(mask or "0xffffffff", 16) == int(value, 16)
        if option == "--ctstate":
            return "NEW" in values[0].split(",")
        if option == "--probability":
            return float(values[0])
        if option == "--rcheck":
            return False  # first connection: no affinity entry yet
        return True  # --comment, --mode, --name, --seconds, --reap, --set: no effect on the match

    def _matches(self, rule: Rule, pkt: Packet) -> float:
        chance = 1.0
        for option, negated, values in rule.checks:
            result = self._check(option, values, pkt)
            if isinstance(result, float) and not isinstance(result, bool):
                chance *= result
                continue
            if bool(result) == negated:
                return 0.0
        return chance

    # -- walking --------------------------------------------------------------------------------------

    def walk(self, table: str, chain: str, pkt: Packet, prob: float, path: list[str],
             depth: int = 0) -> Iterator[tuple[str, Packet, float, list[str]]]:
        """Yield (verdict, packet, probability, path); verdict "RETURN" means fell off the chain."""
        if depth > 32:
            raise RuntimeError(f"jump loop at {chain}")
        rules = self.chains.get((table, chain), [])
        yield from self._walk_from(table, rules, 0, pkt, prob, path, depth)

    def _walk_from(self, table, rules, start, pkt, prob, path, depth):
        for index in range(start, len(rules)):
            rule = rules[index]
            chance = self._matches(rule, pkt)
            if chance == 0.0:
                continue
            if chance < 1.0:  # a fork: the rule may or may not match
                yield from self._walk_from(table, rules, index + 1, pkt, prob * (1 - chance), path, depth)
                prob *= chance
            crossed = path + [rule.text]
            target = rule.target
            if not target:
                path = crossed
                continue
            if target in ("ACCEPT", "DROP", "REJECT"):
                yield target, pkt, prob, crossed
                return
            if target == "RETURN":
                yield "RETURN", pkt, prob, crossed
                return
            if target == "DNAT":
                host, _, port = rule.target_args["--to-destination"].rpartition(":")
                yield "ACCEPT", replace(pkt, dnat=(host.strip("[]"), int(port))), prob, crossed
                return
            if target == "MASQUERADE":
                yield "ACCEPT", replace(pkt, masquerade=True), prob, crossed
                return
            if target == "MARK":
                if "--or-mark" in rule.target_args:
                    pkt = replace(pkt, mark=pkt.mark | int(rule.target_args["--or-mark"], 16))
                elif "--xor-mark" in rule.target_args:
                    pkt = replace(pkt, mark=pkt.mark ^ int(rule.target_args["--xor-mark"], 16))
                path = crossed
                continue
            # A jump to another chain: what falls off its end continues here.
            for verdict, out, p, sub_path in self.walk(table, target, pkt, prob, crossed, depth + 1):
                if verdict == "RETURN":
                    yield from self._walk_from(table, rules, index + 1, out, p, sub_path, depth)
                else:
                    yield verdict, out, p, sub_path
            return
        yield "RETURN", pkt, prob, path

    def _hook(self, table: str, chain: str, states):
        for pkt, prob, path in states:
            for verdict, out, p, sub in self.walk(table, chain, pkt, prob, path):
                yield ("ACCEPT" if verdict == "RETURN" else verdict), out, p, sub

    def trace(self, pkt: Packet) -> list[Outcome]:
        outcomes: list[Outcome] = []
        first = "OUTPUT" if pkt.local_origin else "PREROUTING"
        for verdict, after_nat, prob, path in self._hook("nat", first, [(pkt, 1.0, [])]):
            if verdict != "ACCEPT":
                outcomes.append(Outcome(verdict, prob, after_nat, path))
                continue
            dst = after_nat.dnat[0] if after_nat.dnat else after_nat.dst
            filter_chain = "OUTPUT" if pkt.local_origin else ("INPUT" if self.is_local(dst) else "FORWARD")
            for fverdict, fpkt, fprob, fpath in self._hook("filter", filter_chain, [(after_nat, prob, path)]):
                if fverdict != "ACCEPT":
                    outcomes.append(Outcome(fverdict, fprob, fpkt, fpath))
                    continue
                for pverdict, ppkt, pprob, ppath in self._hook("nat", "POSTROUTING", [(fpkt, fprob, fpath)]):
                    outcomes.append(Outcome(pverdict, pprob, ppkt, ppath))
        return merge(outcomes)


def merge(outcomes: list[Outcome]) -> list[Outcome]:
    """One outcome per distinct result, probabilities added (paths of the first kept)."""
    merged: dict[tuple, Outcome] = {}
    for o in outcomes:
        key = (o.verdict, o.packet.dnat, o.packet.masquerade)
        if key in merged:
            merged[key].probability += o.probability
        else:
            merged[key] = Outcome(o.verdict, o.probability, o.packet, o.rules)
    return sorted(merged.values(), key=lambda o: (-o.probability, o.describe()))

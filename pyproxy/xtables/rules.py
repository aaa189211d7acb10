"""The iptables vocabulary both iptables-writing backends use: our canary and service chain
names, the jumps from built-in chains, iptables-save text read back, and the restore lines that
add missing jumps or take chains away. Pure: text in, text out."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..view import LocalTraffic

CANARY = "KUBE-PROXY-CANARY"
SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")


def is_service_chain(name: str) -> bool:
    return name.startswith(SERVICE_CHAIN_PREFIXES)


@dataclass(frozen=True)
class Jump:
    """A rule in a built-in chain that leads into ours (kept, never flushed, by apply)."""

    table: str
    chain: str
    args: tuple[str, ...]
    target: str

    def rule(self) -> str:
        return " ".join((*self.args, "-j", self.target))


def local_match(local: LocalTraffic, negate: bool = False) -> list[str]:
    """The local-traffic detector as iptables match arguments."""
    neg = ["!"] if negate else []
    if local.cidr:
        return [*neg, "-s", local.cidr]
    return [*neg, "-i", local.interface + ("+" if local.prefix else "")]


@dataclass
class LiveTable:
    chains: set[str] = field(default_factory=set)
    rules: list[str] = field(default_factory=list)  # "-A CHAIN ..." lines as iptables-save prints them


def parse_save(text: str) -> dict[str, LiveTable]:
    tables: dict[str, LiveTable] = {}
    current = LiveTable()
    for line in text.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), LiveTable())
        elif line.startswith(":"):
            current.chains.add(line[1:].split()[0])
        elif line.startswith("-A "):
            current.rules.append(line)
    return tables


def chain_removal(state: LiveTable, chains: list[str]) -> tuple[list[str], list[str]]:
    """iptables-restore --noflush lines that remove `chains` from a table: (deletes of the rules
    elsewhere that jump into them, then the lines that flush and delete them). The deletes must
    come before anything in the same transaction flushes the chains those rules sit in."""
    gone = set(chains)
    deletes = [rule.replace("-A ", "-D ", 1) for rule in state.rules
               if rule.split()[1] not in gone and target_of(rule) in gone]
    return deletes, [f":{c} - [0:0]" for c in chains] + [f"-X {c}" for c in chains]


def rules_per_chain(state: LiveTable) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rule in state.rules:
        chain = rule.split(None, 2)[1]
        counts[chain] = counts.get(chain, 0) + 1
    return counts


def target_of(rule: str) -> str:
    words = rule.split()
    return words[words.index("-j") + 1] if "-j" in words else ""


def missing_jumps(jumps: list[Jump], table: str, live: LiveTable) -> list[str]:
    """`-I CHAIN 1 ...` for each jump not already in the built-in chain (matched by chain, target and
    comment, as iptables-save rewrites the rest of the rule)."""
    present = {(rule.split()[1], target_of(rule), comment_of(rule)) for rule in live.rules}
    out = []
    for jump in jumps:
        if jump.table != table:
            continue
        if (jump.chain, jump.target, comment_of(jump.rule())) not in present:
            out.append(f"-I {jump.chain} 1 {jump.rule()}".replace("  ", " "))
    return out


def comment_of(rule: str) -> str:
    if "--comment" not in rule:
        return ""
    rest = rule.split("--comment", 1)[1].strip()
    if rest.startswith('"'):
        return rest[1:].split('"', 1)[0]
    return rest.split()[0]

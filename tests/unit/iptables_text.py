"""Parse iptables-restore text into {table: {chain: [rules]}} so tests can compare rulesets the
way kube-proxy's own tests do: chain declarations as a set, rules in order within each chain."""

from __future__ import annotations


def parse_tables(text: str) -> dict[str, dict[str, list[str]]]:
    tables: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], {})
        elif line.startswith(":"):
            current.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            chain = line.split()[1]
            current.setdefault(chain, []).append(line)
        elif line.startswith("-X "):
            current.pop(line.split()[1], None)
    return tables


def undefined_jumps(tables: dict[str, dict[str, list[str]]]) -> list[str]:
    """Rules that jump to a KUBE-* chain no table declares (a render bug)."""
    bad = []
    for chains in tables.values():
        for rules in chains.values():
            for rule in rules:
                words = rule.split()
                if "-j" in words:
                    target = words[words.index("-j") + 1]
                    if target.startswith("KUBE-") and target not in chains:
                        bad.append(rule)
    return bad

"""iptables-save output reduced to what a program wrote, so two programs' rulesets compare equal
exactly when they program the same rules.

Dropped: counters, comments and `# Generated` lines, the order of tables and of chain
declarations, and the order of rules in the chains whose order kube-proxy itself leaves to Go's
map iteration (it sorts them the same way in its own unit tests): the service lists.
The rule order of every other chain (KUBE-SVC-* probabilities, KUBE-SEP-*, firewalls) is kept.
"""

from __future__ import annotations

import re

# chains whose rules are one per service port, in kube-proxy's map order (random)
UNORDERED_CHAINS = ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES", "KUBE-PROXY-FIREWALL")
LAST_RULE = "NOTE: this must be the last rule in this chain"
_COUNTERS = re.compile(r" \[\d+:\d+\]$")
# kube-proxy counts two things with nfacct objects (its *_packets_total metrics) where the kernel
# has nfnetlink_acct; pyproxy does not: a departure listed in the README. Its INVALID drop then
# has no nfacct match, and the localhost NodePort counting rules (written only for nfacct) go.
NFACCT = re.compile(r" -m nfacct --nfacct-name +\S+")


def normalise(save: str, drop_nfacct: bool = True) -> dict[str, dict[str, list[str]]]:
    """{table: {chain: [rules]}}, every chain declared in the table present (empty if no rules)."""
    tables: dict[str, dict[str, list[str]]] = {}
    table: dict[str, list[str]] | None = None
    for line in save.splitlines():
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = tables.setdefault(line[1:], {})
        elif line.startswith(":") and table is not None:
            name, policy = line[1:].split()[:2]
            table.setdefault(f"{name} {policy}", [])
        elif line.startswith("-A ") and table is not None:
            if drop_nfacct and NFACCT.search(line):
                if "localhost_nps_accepted_pkts" in line:
                    continue
                line = NFACCT.sub("", line)
            chain = line.split()[1]
            key = next((k for k in table if k.split()[0] == chain), chain + " -")
            table.setdefault(key, []).append(line)
    for chains in tables.values():
        for key, rules in chains.items():
            if key.split()[0] in UNORDERED_CHAINS:
                last = [r for r in rules if LAST_RULE in r]
                chains[key] = sorted(r for r in rules if LAST_RULE not in r) + last
    # tables a program never touched show up empty in one save and not at all in the other
    return {name: chains for name, chains in tables.items() if any(chains.values()) or len(chains) > 5}


def ours(tables: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
    """Only what a Kubernetes service proxy writes (KUBE-* chains and the jumps into them)."""
    out = {}
    for name, chains in tables.items():
        kept = {}
        for key, rules in chains.items():
            if key.startswith("KUBE-"):
                kept[key] = rules
            else:
                jumps = [r for r in rules if " -j KUBE-" in r]
                if jumps:
                    kept[key.split()[0]] = jumps
        if kept:
            out[name] = kept
    return out


def render(tables: dict[str, dict[str, list[str]]]) -> list[str]:
    lines = []
    for name in sorted(tables):
        lines.append(f"*{name}")
        for key in sorted(tables[name]):
            lines.append(f":{key}")
            lines.extend(tables[name][key])
    return lines

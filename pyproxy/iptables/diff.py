"""`pyproxy diff`: the rules this node should have against the rules its kernel has.

iptables-save prints rules in its own canonical form (matches reordered, /32 added, marks
rewritten), so the expected side is put in that form by the kernel itself: the rendered ruleset
is loaded into a private, empty network namespace made for the purpose, saved, and the namespace
deleted. Only our part of each side is compared: KUBE-* chains and the jumps into them.
"""

from __future__ import annotations

import difflib

import subprocess

from .. import netns
from ..xtables.rules import SERVICE_CHAIN_PREFIXES
from .apply import OWN_CHAINS, IptablesBackend
from .render import Ruleset


def ours(save_text: str) -> list[str]:
    """Our chains and rules from iptables-save output, in a stable order."""
    out: list[str] = []
    table = ""
    chains: list[str] = []
    rules: list[str] = []

    def flush() -> None:
        if table and (chains or rules):
            out.extend([f"*{table}", *sorted(chains), *rules, "COMMIT"])

    for line in save_text.splitlines():
        if line.startswith("*"):
            flush()
            table, chains, rules = line[1:], [], []
        elif line.startswith(":"):
            name = line[1:].split()[0]
            if _is_ours(table, name):
                chains.append(f":{name}")
        elif line.startswith("-A "):
            words = line.split()
            target = words[words.index("-j") + 1] if "-j" in words else ""
            if _is_ours(table, words[1]) or _is_ours(table, target):
                rules.append(line)
    flush()
    return out


def _is_ours(table: str, chain: str) -> bool:
    return chain in OWN_CHAINS.get(table, ()) or chain.startswith(SERVICE_CHAIN_PREFIXES)


def canonical(ruleset: Ruleset, variant: str) -> str:
    with netns.scratch():
        backend = IptablesBackend(ruleset.family, variant)
        backend.sync(ruleset, full=True)
        return _save(backend)


def _save(backend: IptablesBackend) -> str:
    return subprocess.run([backend.save_tool], capture_output=True, text=True, check=True).stdout


def diff(ruleset: Ruleset, variant: str) -> tuple[str, str]:
    """(unified diff expected -> live, variant used); empty diff when equal."""
    live_backend = IptablesBackend(ruleset.family, variant)
    expected = ours(canonical(ruleset, live_backend.variant))
    live = ours(_save(live_backend))
    text = "".join(difflib.unified_diff([l + "\n" for l in expected], [l + "\n" for l in live],
                                        fromfile="expected (pyproxy dump)", tofile=f"live ({live_backend.save_tool})"))
    return text, live_backend.variant




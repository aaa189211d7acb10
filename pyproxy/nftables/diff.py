"""`pyproxy diff --backend nftables`: the table this node should have against the live one.

Like the iptables diff, the expected side is put in the kernel's own listing format by loading
it into a private namespace made for the purpose. Set and map elements are sorted (their listing
order follows the kernel's hashing), and the dynamic affinity sets' contents are left out (they
hold clients, not rules).
"""

from __future__ import annotations

import difflib
import re
import subprocess

from .. import netns
from .apply import NftablesBackend
from .render import NftRuleset

_ELEMENTS = re.compile(r"elements = \{(.*?)\}", re.S)


def normalize(listing: str) -> list[str]:
    def sort_elements(m: re.Match) -> str:
        entries = sorted(e.strip() for e in m.group(1).replace("\n", " ").split(",") if e.strip())
        return "elements = { " + ", ".join(entries) + " }"

    text = _ELEMENTS.sub(sort_elements, listing)
    out, skip = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("set affinity-"):
            skip = True
        if skip and stripped.startswith("elements ="):
            continue
        if skip and stripped == "}":
            skip = False
        if stripped:
            out.append(line.rstrip())
    return out


def listing(family: str, table: str) -> str:
    proc = subprocess.run(["nft", "list", "table", family, table], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else ""


def diff(ruleset: NftRuleset) -> str:
    with netns.scratch():
        NftablesBackend(ruleset.family, ruleset.table).run(ruleset.script())
        expected = listing(ruleset.nft_family, ruleset.table)
    live = listing(ruleset.nft_family, ruleset.table)
    return "".join(difflib.unified_diff([l + "\n" for l in normalize(expected)], [l + "\n" for l in normalize(live)],
                                        fromfile="expected (pyproxy dump --backend nftables)",
                                        tofile=f"live (nft list table {ruleset.nft_family} {ruleset.table})"))

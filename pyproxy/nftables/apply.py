"""Reconcile the kernel with an NftRuleset: the only place that runs `nft` for this backend.

A full sync replaces our table in one `nft -f` transaction (`add table; delete table; table
{...}`), so there is never a moment without rules. A partial sync sends only what changed: the
chains and affinity sets of changed services (declared, flushed, refilled), and the map/set
elements that differ, in one transaction; stale chains go after the elements that pointed at
them. Nothing outside our table is touched. A failed transaction changes nothing (nft is atomic)
and makes the next sync a full one.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

from .render import NftRuleset, ServiceNft, element_lines


class NftError(RuntimeError):
    pass


@dataclass
class NftSyncResult:
    full: bool
    seconds: float
    chains_written: int
    chains_deleted: int
    bytes_written: int


class NftablesBackend:
    def __init__(self, family: int = 4, table: str = "kube-proxy") -> None:
        self.family = family
        self.table = table
        self.fam = "ip" if family == 4 else "ip6"
        self.variant = "nftables"
        self._services: dict[str, ServiceNft] | None = None
        self._elements: dict[str, dict[str, str]] = {}
        self.last_ruleset: NftRuleset | None = None

    def run(self, script: str) -> None:
        proc = subprocess.run(["nft", "-f", "-"], input=script.encode(), capture_output=True)
        if proc.returncode:
            raise NftError(f"nft -f failed: {proc.stderr.decode(errors='replace').strip()[:2000]}")

    def table_present(self) -> bool:
        return subprocess.run(["nft", "list", "chain", self.fam, self.table, "canary"],
                              capture_output=True).returncode == 0

    def sync(self, ruleset: NftRuleset, full: bool = False) -> NftSyncResult:
        start = time.monotonic()
        full = full or self._services is None or not self.table_present()
        try:
            if full:
                script = ruleset.script()
                written = sum(len(s.chains) for s in ruleset.services.values())
                deleted = 0
            else:
                script, written, deleted = self._partial(ruleset)
            if script:
                self.run(script)
        except NftError:
            self._services = None
            raise
        self._services = dict(ruleset.services)
        self._elements = ruleset.all_elements()
        self.last_ruleset = ruleset
        return NftSyncResult(full, time.monotonic() - start, written, deleted, len(script))

    def _partial(self, ruleset: NftRuleset) -> tuple[str, int, int]:
        assert self._services is not None
        fam, table = self.fam, self.table
        old = self._services
        changed = [k for k, s in ruleset.services.items() if old.get(k) is not s]
        removed = [k for k in old if k not in ruleset.services]
        new_chains: dict[str, list[str]] = {}
        new_sets: dict[str, str] = {}
        for key in changed:
            new_chains.update(ruleset.services[key].chains)
            new_sets.update(ruleset.services[key].sets)
        old_chains = {c for k in changed + removed if k in old for c in old[k].chains}
        old_sets = {n for k in changed + removed if k in old for n in old[k].sets}
        lines: list[str] = []
        for name, body in new_sets.items():
            if name not in old_sets:
                lines.append(f"add set {fam} {table} {name} {{ {body} }}")
        for name in new_chains:  # every chain exists before any rule jumps to it
            lines += [f"add chain {fam} {table} {name}", f"flush chain {fam} {table} {name}"]
        for name, rules in new_chains.items():
            lines += [f"add rule {fam} {table} {name} {rule}" for rule in rules]
        # elements: only the differences, removals first (a key whose value changed is re-added)
        elements = ruleset.all_elements() if (changed or removed) else self._elements
        for container in sorted(set(elements) | set(self._elements)):
            before, after = self._elements.get(container, {}), elements.get(container, {})
            gone = {k: v for k, v in before.items() if after.get(k, None) != v}
            added = {k: v for k, v in after.items() if before.get(k, None) != v}
            if gone:
                lines += element_lines("delete", fam, table, container, gone)
            if added:
                lines += element_lines("add", fam, table, container, added)
        stale_chains = sorted(old_chains - set(new_chains))
        # flushed first, so none still jumps to another when it is deleted
        lines += [f"flush chain {fam} {table} {name}" for name in stale_chains]
        lines += [f"delete chain {fam} {table} {name}" for name in stale_chains]
        lines += [f"delete set {fam} {table} {name}" for name in sorted(old_sets - set(new_sets))]
        return ("\n".join(lines) + "\n" if lines else ""), len(new_chains), len(stale_chains)

    def cleanup(self) -> int:
        present = subprocess.run(["nft", "list", "table", self.fam, self.table], capture_output=True).returncode == 0
        if present:
            self.run(f"delete table {self.fam} {self.table}\n")
        self._services = None
        return int(present)

"""Reconcile the kernel's iptables with a rendered Ruleset (through pyproxy.xtables' client).

Every write is an `iptables-restore --noflush --wait` call (atomic per table) naming only chains
of ours and our jumps, legacy or nft variant. A full sync writes every chain of ours (with nft,
every one that differs from the kernel, in transactions of a bounded size), adds missing jumps
from the built-in chains and deletes stale service chains it finds with iptables-save. A partial
sync writes only what changed since the last successful sync: the shared chains whose lines
differ and the own chains of services whose rendered rules are new (the Renderer hands back the
very same object for an unchanged service, so "changed" is an identity test). Anything unusual (a failed restore, a
missing canary) makes the next sync a full one; a failed restore leaves the previous rules.
"""

from __future__ import annotations

import itertools
import time
from typing import Iterator, Mapping

from ..backend import SyncResult, changed_keys
from ..xtables.client import ApplyError, XtablesClient
from ..xtables.rules import (
    CANARY,
    SERVICE_CHAIN_PREFIXES,
    LiveTable,
    chain_removal,
    is_service_chain,
    missing_jumps,
    rules_per_chain,
)
from .render import LazyRuleset, Prerendered, Ruleset, ServiceRules

__all__ = ["ApplyError", "IptablesBackend", "OWN_CHAINS"]

# Chains pyproxy (like kube-proxy) owns outright; `cleanup` removes these and the jumps to them.
OWN_CHAINS = {
    "filter": ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-FORWARD",
               "KUBE-PROXY-FIREWALL", "KUBE-FIREWALL", CANARY),
    "nat": ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", CANARY),
    "mangle": (CANARY,),
}


class IptablesBackend(XtablesClient):
    def __init__(self, family: int = 4, variant: str = "auto") -> None:
        super().__init__(family, variant)
        self._services: Mapping[str, ServiceRules] | None = None  # what the kernel holds, by service port
        self._shared: dict[tuple[str, str], list[str]] = {}
        self.last_ruleset: Ruleset | None = None  # what the last successful sync applied

    # -- syncs ---------------------------------------------------------------------------------------

    def needs_full_sync(self) -> bool:
        return self._services is None or not self.canary_present()

    def sync(self, rules: Ruleset | LazyRuleset, full: bool = False) -> SyncResult:
        """Apply a Ruleset, or a LazyRuleset (rendered while restore reads it, on full syncs)."""
        start = time.monotonic()
        self.last_rules_written = {}
        full = full or self.needs_full_sync()
        lazy = Prerendered(rules) if isinstance(rules, Ruleset) else rules
        try:
            if full and self.variant == "nft":
                transactions, written, deleted = self._reconcile(lazy.materialize())
                size = sum(self.restore(lines) for lines in transactions)
            elif full:
                counts: dict[str, int] = {}
                size = self.restore(self._full(lazy, counts))
                written, deleted = counts["written"], counts["deleted"]
            else:
                part, written, deleted = self._partial(lazy.materialize())
                size = self.restore(part) if part is not None else 0
        except ApplyError:
            self._services = None  # whatever happened, the next sync starts from the kernel
            raise
        ruleset = lazy.materialize()
        self._services = ruleset.services  # a renderer never changes a ruleset it handed out
        self._shared = {k: list(v) for k, v in ruleset.shared.items()}
        self.last_ruleset = ruleset
        return SyncResult(full, time.monotonic() - start, written, deleted, size)

    def _full(self, lazy: LazyRuleset | Prerendered, counts: dict[str, int]) -> Iterator[str]:
        """Every chain of ours with `--noflush`; stale service chains found by a save go."""
        live = self.save("filter", "nat", "mangle")

        def nat_tail(r: Ruleset) -> Iterator[str]:
            stale = sorted(c for c in live["nat"].chains if is_service_chain(c) and c not in r.service_chains())
            counts["deleted"] = len(stale)
            counts["written"] = len(r.filter_chains) + len(r.nat_chains) + len(r.service_chains())
            yield from (f":{c} - [0:0]" for c in stale)
            yield from missing_jumps(r.jumps, "nat", live["nat"])
            yield from (f"-X {c}" for c in stale)

        def filter_table() -> Iterator[str]:  # after nat: needs the finished ruleset
            r = lazy.ruleset
            yield from r.table_lines("filter", extra_chains=[CANARY],
                                     extra_rules=missing_jumps(r.jumps, "filter", live["filter"]))

        return itertools.chain(("*mangle", f":{CANARY} - [0:0]", "COMMIT"),
                               lazy.nat_lines(head=[f":{CANARY} - [0:0]"], tail=nat_tail), filter_table())

    # iptables-nft-restore --noflush (1.8.9) slows down with the size of its input far more than
    # with the size of the table (measured here: 2,000 new chains onto 20,000 in 0.12 s, 5,000
    # onto 100,000 in 0.67 s, 10,000 in 2 s, 110,000 in one go 458 s): a big sync goes as several
    # transactions of about this many chains.
    NOFLUSH_BATCH_CHAINS = 2000

    def _reconcile(self, ruleset: Ruleset) -> tuple[list[list[str]], int, int]:
        """A full sync for iptables-nft, as `--noflush` transactions that name only chains of ours,
        so another program's rules are never part of what is written, whenever it changes them,
        and their counters run on. Written: every chain that differs from the kernel (by its rule
        count there, and by what this process last wrote; after a restart or a flush, all of them).
        Each service's chains go in one transaction, before the shared chains that jump into
        them; stale chains go after those: no service is ever seen half-written."""
        live = self.save("filter", "nat", "mangle")
        remembered: dict[tuple[str, str], list[str]] = {}
        if self._services is not None and self.canary_present():
            remembered = {("nat", c): lines for rules in self._services.values() for c, lines in rules.chains.items()}
            remembered.update(self._shared)

        def differs(table: str, chain: str, lines: list[str], in_kernel: dict[str, int]) -> bool:
            return (chain not in live[table].chains or in_kernel.get(chain, 0) != len(lines)
                    or remembered.get((table, chain)) != lines)

        counts = {table: rules_per_chain(live[table]) for table in ("filter", "nat")}
        transactions: list[list[str]] = []
        # the shared chains a service's rules jump to (KUBE-MARK-MASQ) exist, empty, from the first
        # transaction on; nothing jumps into a missing one yet, and they get their rules below
        batch = [f":{c} - [0:0]" for c in ruleset.nat_chains if c not in live["nat"].chains]
        chains_in_batch = written = 0
        for rules in ruleset.services.values():
            own = [(c, lines) for c, lines in rules.chains.items() if differs("nat", c, lines, counts["nat"])]
            if not own:
                continue
            batch += [f":{c} - [0:0]" for c, _ in own]
            for _, lines in own:
                batch += lines
            chains_in_batch += len(own)
            written += len(own)
            if chains_in_batch >= self.NOFLUSH_BATCH_CHAINS:
                transactions.append(["*nat", *batch, "COMMIT"])
                batch, chains_in_batch = [], 0
        if batch:
            transactions.append(["*nat", *batch, "COMMIT"])

        shared: list[str] = [] if CANARY in live["mangle"].chains else ["*mangle", f":{CANARY} - [0:0]", "COMMIT"]
        stale: dict[str, list[str]] = {}
        for table, order in (("filter", ruleset.filter_chains), ("nat", ruleset.nat_chains)):
            state = live[table]
            desired = {c: ruleset.shared.get((table, c), []) for c in order}
            changed = [c for c, lines in desired.items() if differs(table, c, lines, counts[table])]
            canary = [] if CANARY in state.chains else [CANARY]
            jumps = missing_jumps(ruleset.jumps, table, state)
            own = set(desired) | (set(ruleset.service_chains()) if table == "nat" else set())
            stale[table] = sorted(c for c in state.chains if c not in own and c != CANARY
                                  and (c in OWN_CHAINS[table] or c.startswith(SERVICE_CHAIN_PREFIXES)))
            if changed or canary or jumps:
                shared += [f"*{table}", *(f":{c} - [0:0]" for c in [*changed, *canary])]
                for c in changed:
                    shared += desired[c]
                shared += [*jumps, "COMMIT"]
                written += len(changed)
        if shared:
            transactions.append(shared)
        transactions += self._removals(live, stale, rewritten=set(_declared(transactions)))
        return transactions, written, sum(len(c) for c in stale.values())

    def _removals(self, live: dict[str, LiveTable], stale: dict[str, list[str]], rewritten: set[tuple[str, str]]
                  ) -> list[list[str]]:
        """Transactions that remove stale chains: the rules elsewhere that jump into them first
        (none in a chain already rewritten: its old rules went with the flush), then every stale
        chain flushed, then deleted, in batches (a stale chain may still jump into another)."""
        out: list[list[str]] = []
        size = self.NOFLUSH_BATCH_CHAINS
        for table, chains in stale.items():
            if not chains:
                continue
            deletes, _ = chain_removal(live[table], chains)
            deletes = [d for d in deletes if (table, d.split(None, 2)[1]) not in rewritten]
            flushes = [chains[i:i + size] for i in range(0, len(chains), size)]
            out.append([f"*{table}", *deletes, *(f":{c} - [0:0]" for c in flushes[0]),
                        *([f"-X {c}" for c in chains] if len(flushes) == 1 else []), "COMMIT"])
            if len(flushes) > 1:
                out += [[f"*{table}", *(f":{c} - [0:0]" for c in part), "COMMIT"] for part in flushes[1:]]
                out += [[f"*{table}", *(f"-X {c}" for c in part), "COMMIT"] for part in flushes]
        return out

    def _partial(self, ruleset: Ruleset) -> tuple[list[str] | None, int, int]:
        assert self._services is not None
        old = self._services
        changed, removed = changed_keys(old, ruleset.services, ruleset.changes)
        new_chains: dict[str, list[str]] = {}
        for key in changed:
            new_chains.update(ruleset.services[key].chains)
        # Chain names hash the service port, so a chain can only move within its own service.
        stale = sorted({c for k in changed + removed if k in old for c in old[k].chains} - set(new_chains))
        text: list[str] = []
        written = 0
        for table, order in (("filter", ruleset.filter_chains), ("nat", ruleset.nat_chains)):
            shared = [c for c in order if ruleset.shared.get((table, c), []) != self._shared.get((table, c))]
            own = new_chains if table == "nat" else {}
            gone = stale if table == "nat" else []
            if not (shared or own or gone):
                continue
            lines = [f"*{table}"]
            lines += [f":{c} - [0:0]" for c in [*shared, *sorted(own), *gone]]
            for c in shared:
                lines += ruleset.shared.get((table, c), [])
            for c in sorted(own):
                lines += own[c]
            lines += [f"-X {c}" for c in gone]
            lines.append("COMMIT")
            text.extend(lines)
            written += len(shared) + len(own)
        return (text or None), written, len(stale)

    # -- cleanup ----------------------------------------------------------------------------------------

    def cleanup(self) -> int:
        """Remove every chain of ours and every jump to one; return how many chains went."""
        live = self.save("filter", "nat", "mangle")
        parts, removed = [], 0
        for table in ("mangle", "filter", "nat"):
            state = live[table]
            ours = sorted(c for c in state.chains if c in OWN_CHAINS[table] or c.startswith(SERVICE_CHAIN_PREFIXES))
            if not ours:
                continue
            deletes, removals = chain_removal(state, ours)
            parts += [f"*{table}", *deletes, *removals, "COMMIT"]
            removed += len(ours)
        if parts:
            self.restore(parts)
        self._services = None
        return removed


def _declared(transactions: list[list[str]]) -> Iterator[tuple[str, str]]:
    """(table, chain) of every chain the transactions declare (create or flush)."""
    for transaction in transactions:
        table = ""
        for line in transaction:
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":"):
                yield table, line[1:].split(None, 1)[0]


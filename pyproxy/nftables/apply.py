"""Reconcile the kernel with an NftRuleset: the only place that runs `nft` for this backend.

A full sync replaces our table in one `nft -f` transaction (`add table; delete table; table
{...}`), so there is never a moment without rules. A partial sync sends only what changed, in one
transaction: the chains and affinity sets of changed services (declared, flushed, refilled), new
endpoint-map shards and the map/set elements that differ; stale chains go after the elements
that pointed at them. When only elements differ (an endpoint moved), they go as one nfnetlink
batch instead (pyproxy/netlink/nftables.py): nft's start-up alone costs more than the change. Nothing outside
our table is touched. A failed transaction changes nothing (both paths are atomic) and makes the
next sync a full one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from typing import Mapping

from ..backend import SyncError, SyncResult, changed_keys
from ..netlink.nftables import ElementBatch, ElementError, open_socket
from .render import NftRuleset, ServiceNft, element_lines


class NftError(SyncError):
    pass


class NftablesBackend:
    def __init__(self, family: int = 4, table: str = "kube-proxy") -> None:
        self.family = family
        self.table = table
        self.fam = "ip" if family == 4 else "ip6"
        self.variant = "nftables"
        self._services: Mapping[str, ServiceNft] | None = None
        # (map or set, key) -> [value, how many service ports hold it]: a cluster IP is shared by
        # a service's ports and a hairpin pair by every service selecting that pod.
        self._refs: dict[tuple[str, str], list] = {}
        self._maps: set[str] = set()  # endpoint map shards in the kernel (they are never deleted
        # by a partial sync: an empty shard costs nothing and the next full sync drops it)
        self.last_ruleset: NftRuleset | None = None
        self._sock: tuple[int, socket.socket] | None = None  # (netns inode, netlink socket) for element batches

    def run(self, script: str) -> None:
        proc = subprocess.run(["nft", "-f", "-"], input=script.encode(), capture_output=True)
        if proc.returncode:
            raise NftError(f"nft -f failed: {proc.stderr.decode(errors='replace').strip()[:2000]}")

    def sync(self, ruleset: NftRuleset, full: bool = False) -> SyncResult:
        """No check that our table is still there before a partial sync: with nft 1.0.6 even
        `nft list tables` fetches every element (3 s at 10,000 services). A table someone
        deleted makes the partial transaction fail, and a failure makes the next sync full."""
        start = time.monotonic()
        # the fixed part (node port addresses, masquerade mark...) changes only by a whole reload
        full = full or self._services is None or (self.last_ruleset is not None and
                                                  self.last_ruleset.static != ruleset.static)
        try:
            if full:
                script = ruleset.script()
                written = sum(len(s.chains) for s in ruleset.services.values())
                deleted = 0
                self.run(script)
            else:
                script, written, deleted = self._partial(ruleset)
        except NftError:
            self._services = None
            raise
        if full:
            self._refs = {}
            for svc in ruleset.services.values():
                self._count(svc, +1)
        self._services = ruleset.services  # a renderer never changes a ruleset it handed out
        self._maps = set(ruleset.maps) if full else self._maps | set(ruleset.maps)
        self.last_ruleset = ruleset
        return SyncResult(full, time.monotonic() - start, written, deleted, len(script))

    def send_elements(self, gone: dict[str, dict[str, str]], added: dict[str, dict[str, str]]) -> int:
        """Element-only changes (an endpoint moved): one nfnetlink batch, no nft start-up."""
        batch = ElementBatch(self.family, self.table)
        for container in sorted(gone):
            batch.delete(container, gone[container])
        for container in sorted(added):
            batch.add(container, added[container])
        netns = os.stat("/proc/thread-self/ns/net").st_ino
        if self._sock is None or self._sock[0] != netns:  # one socket per namespace, kept open
            self._sock = (netns, open_socket())
        try:
            return batch.send(self._sock[1])
        except (ElementError, OSError) as err:
            self._sock[1].close()
            self._sock = None
            raise NftError(f"element update failed: {err}") from err

    def _partial(self, ruleset: NftRuleset) -> tuple[str, int, int]:
        """Sends what changed; returns (nft script sent or "", chains written, chains deleted)."""
        assert self._services is not None
        fam, table = self.fam, self.table
        old = self._services
        changed, removed = changed_keys(old, ruleset.services, ruleset.changes)
        new_chains: dict[str, list[str]] = {}
        new_sets: dict[str, str] = {}
        kept: set[str] = set()
        for key in changed:
            before = old[key].chains if key in old else {}
            for name, rules in ruleset.services[key].chains.items():
                if before.get(name) == rules:
                    kept.add(name)  # same rules: leave the chain alone (often only elements moved)
                else:
                    new_chains[name] = rules
            new_sets.update(ruleset.services[key].sets)
        old_chains = {c for k in changed + removed if k in old for c in old[k].chains} - kept
        old_sets = {n for k in changed + removed if k in old for n in old[k].sets}
        lines = [f"add map {fam} {table} {name} {{ {body} }}" for name, body in ruleset.maps.items()
                 if name not in self._maps]
        for name, body in new_sets.items():
            if name not in old_sets:
                lines.append(f"add set {fam} {table} {name} {{ {body} }}")
        for name in new_chains:  # every chain exists before any rule jumps to it
            lines += [f"add chain {fam} {table} {name}", f"flush chain {fam} {table} {name}"]
        for name, rules in new_chains.items():
            lines += [f"add rule {fam} {table} {name} {rule}" for rule in rules]
        # elements: only the differences, removals first (a key whose value changed is re-added)
        before = {ck: ref[0] for ck in self._touched(old, ruleset, changed, removed) if (ref := self._refs.get(ck))}
        for key in changed + removed:
            if key in old:
                self._count(old[key], -1)
        for key in changed:
            self._count(ruleset.services[key], +1)
        gone: dict[str, dict[str, str]] = {}
        added: dict[str, dict[str, str]] = {}
        for (container, key), value in before.items():
            ref = self._refs.get((container, key))
            if ref is None or ref[0] != value:
                gone.setdefault(container, {})[key] = value
        for key in changed:
            for container, items in ruleset.services[key].elements.items():
                for k, v in items.items():
                    if before.get((container, k)) != v:
                        added.setdefault(container, {})[k] = v
        stale_chains = sorted(old_chains - set(new_chains))
        stale_sets = sorted(old_sets - set(new_sets))
        if not lines and not stale_chains and not stale_sets:
            if gone or added:
                self.send_elements(gone, added)
            return "", 0, 0
        for container in sorted(gone):
            lines += element_lines("delete", fam, table, container, gone[container])
        for container in sorted(added):
            lines += element_lines("add", fam, table, container, added[container])
        # flushed first, so none still jumps to another when it is deleted
        lines += [f"flush chain {fam} {table} {name}" for name in stale_chains]
        lines += [f"delete chain {fam} {table} {name}" for name in stale_chains]
        lines += [f"delete set {fam} {table} {name}" for name in stale_sets]
        script = "\n".join(lines) + "\n"
        self.run(script)
        return script, len(new_chains), len(stale_chains)

    def _count(self, svc: ServiceNft, delta: int) -> None:
        for container, items in svc.elements.items():
            for key, value in items.items():
                ref = self._refs.get((container, key))
                if ref is None:
                    self._refs[(container, key)] = [value, delta]
                else:
                    ref[0], ref[1] = (value if delta > 0 else ref[0]), ref[1] + delta
                    if ref[1] <= 0:
                        del self._refs[(container, key)]

    @staticmethod
    def _touched(old: dict[str, ServiceNft], ruleset: NftRuleset, changed: list[str],
                 removed: list[str]) -> set[tuple[str, str]]:
        keys: set[tuple[str, str]] = set()
        for key in changed + removed:
            for svc in (old.get(key), ruleset.services.get(key)):
                if svc is not None:
                    keys.update((c, k) for c, items in svc.elements.items() for k in items)
        return keys

    def cleanup(self) -> int:
        present = subprocess.run(["nft", "list", "table", self.fam, self.table], capture_output=True).returncode == 0
        if present:
            self.run(f"delete table {self.fam} {self.table}\n")
        self._services = None
        return int(present)

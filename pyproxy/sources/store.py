"""The cluster state a source maintains, shared with the sync loop.

Invariant: an object that did not change keeps its instance. Sources replace an entry only when
the new value differs, so the view builder can tell "unchanged" by identity (see ViewBuilder).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from ..model.cluster import Cluster


@dataclass
class Store:
    cluster: Cluster = field(default_factory=Cluster)
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(init=False)
    synced: dict[str, bool] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)  # object version -> reason, logged once
    version: int = 0  # bumped by every change
    service_changes: int = 0
    endpoint_changes: int = 0
    # services and slices changed since the sync loop last took them (kube-proxy's *_pending gauges)
    pending: dict[str, set[str]] = field(default_factory=lambda: {"Service": set(), "EndpointSlice": set()})
    stopping: bool = False  # set by wake(): waits return at once
    # each follower's own change set (kind -> keys changed since it last took it), see follow_changes
    followers: list[dict[str, set[str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    def table(self, kind: str) -> dict[str, Any]:
        c = self.cluster
        return {"Service": c.services, "EndpointSlice": c.slices, "Node": c.nodes, "ServiceCIDR": c.service_cidrs}[kind]

    def set(self, kind: str, key: str, obj: Any) -> bool:
        """Store (or with None, remove) one object; the caller holds the lock. True if it changed."""
        table = self.table(kind)
        if obj is None:
            if table.pop(key, None) is None:
                return False
        elif table.get(key) == obj:
            return False
        else:
            table[key] = obj
        self.version += 1
        if kind in self.pending:
            self.pending[kind].add(key)
        for changes in self.followers:
            changes.setdefault(kind, set()).add(key)
        if kind == "Service":
            self.service_changes += 1
        elif kind == "EndpointSlice":
            self.endpoint_changes += 1
        return True

    def snapshot(self, take_pending: bool = False) -> tuple[Cluster, int]:
        """A copy of the state and its version; `take_pending`: the sync loop takes the pending
        changes with it (they count as pending no more)."""
        with self.lock:
            if take_pending:
                for keys in self.pending.values():
                    keys.clear()
            return self._copy(), self.version

    def _copy(self) -> Cluster:
        c = self.cluster
        return Cluster(dict(c.services), dict(c.slices), dict(c.nodes), dict(c.service_cidrs), list(c.errors))

    def follow_changes(self) -> dict[str, set[str]]:
        """A change set of the caller's own that every later change fills (kind -> keys), so it
        can work on what changed instead of comparing the whole state; see take_changes."""
        with self.lock:
            changes: dict[str, set[str]] = {}
            self.followers.append(changes)
            return changes

    def unfollow(self, changes: dict[str, set[str]]) -> None:
        with self.lock:
            self.followers = [c for c in self.followers if c is not changes]

    def take_changes(self, changes: dict[str, set[str]]) -> tuple[Cluster, int, dict[str, set[str]]]:
        """A snapshot, and what changed since the follower last took its change set (emptied)."""
        with self.lock:
            taken = {kind: set(keys) for kind, keys in changes.items()}
            changes.clear()
            return self._copy(), self.version, taken

    def pending_counts(self) -> tuple[int, int]:
        """(services, EndpointSlices) changed and not yet taken by a sync."""
        with self.lock:
            return len(self.pending["Service"]), len(self.pending["EndpointSlice"])

    def wait_for_change(self, version: int, timeout: float) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.version != version or self.stopping, timeout)

    def wake(self) -> None:
        """End every wait for good (the daemon is stopping)."""
        with self.changed:
            self.stopping = True
            self.changed.notify_all()

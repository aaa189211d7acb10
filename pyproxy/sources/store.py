"""The cluster state a source maintains, shared with the sync loop.

Invariant: an object that did not change keeps its instance. Sources replace an entry only when
the new value differs, so the view builder can tell "unchanged" by identity (see ViewBuilder).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from ..model.cluster import Cluster


def _table(c: Cluster, kind: str) -> dict[str, Any]:
    return {"Service": c.services, "EndpointSlice": c.slices, "Node": c.nodes, "ServiceCIDR": c.service_cidrs}[kind]


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
    # each follower's own change set (kind -> keys changed since it last took it), see Follower
    followers: list[dict[str, set[str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    def table(self, kind: str) -> dict[str, Any]:
        return _table(self.cluster, kind)

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

    def follow(self) -> "Follower":
        """A reader of its own that takes what changed, not the whole state (see Follower)."""
        with self.lock:
            follower = Follower(self)
            self.followers.append(follower.changes)
            return follower

    def unfollow(self, follower: "Follower") -> None:
        with self.lock:
            self.followers = [c for c in self.followers if c is not follower.changes]

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


class Follower:
    """One reader of a Store (the sync loop, the DNS zone): the keys that changed since it last
    took them, and its own copy of the cluster brought up to date with just those, so that a take
    costs what changed, not a copy of 100,000 services (10 ms)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.changes: dict[str, set[str]] = {}  # kind -> keys; every Store.set fills it
        self.cluster: Cluster | None = None

    def take(self, take_pending: bool = False) -> tuple[Cluster, int, dict[str, set[str]]]:
        """The follower's cluster, its version and what changed since the last take (kind ->
        keys). The cluster is this follower's own and is updated in place by the next take: a
        reader keeps what it needs of it (the view and zone builders keep their own). The first
        take copies the whole state; `take_pending` as in Store.snapshot."""
        store = self.store
        with store.lock:
            if take_pending:
                for keys in store.pending.values():
                    keys.clear()
            taken = {kind: set(keys) for kind, keys in self.changes.items()}
            self.changes.clear()
            if self.cluster is None:
                self.cluster = store._copy()
                return self.cluster, store.version, taken
            for kind, keys in taken.items():
                theirs, ours = store.table(kind), _table(self.cluster, kind)
                for key in keys:
                    obj = theirs.get(key)
                    if obj is None:
                        ours.pop(key, None)
                    else:
                        ours[key] = obj
            self.cluster.errors = list(store.cluster.errors)
            return self.cluster, store.version, taken

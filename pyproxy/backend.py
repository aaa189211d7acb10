"""What every dataplane backend shares: its error type, the result of a sync, and the per-service-port
memo that makes successive renders cost only what changed.

Invariant: pure (no kernel I/O); the memo only ever returns what rendering would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, Hashable, Iterator, Mapping, NamedTuple, TypeVar

from .layered import Layered
from .view import NodeView, ServicePortView

T = TypeVar("T")


class SyncError(RuntimeError):
    """A backend could not write the rules (the previous ones stay); each backend's error is one."""


@dataclass
class SyncResult:
    full: bool
    seconds: float
    chains_written: int
    chains_deleted: int
    bytes_written: int


class RenderChanges(NamedTuple):
    """How a memo's rendered rules differ from the ones it returned before (`base`, that very dict):
    the keys rendered anew and the keys that went. A writer that applied `base` writes these and
    compares nothing; any other writer compares (see nftables.apply)."""

    base: Mapping[str, Any]
    changed: frozenset[str]
    removed: frozenset[str]


def changed_keys(old: Mapping[str, Any], services: Mapping[str, Any], changes: RenderChanges | None
                 ) -> tuple[list[str], list[str]]:
    """(changed, removed): the keys of `services` whose rules are not `old`'s, what a writer applied
    last, and the keys `old` had that went. From the renderer's changes when they are relative to
    that very `old` (no walk), else by comparing every entry."""
    if changes is not None and changes.base is old:
        return sorted(changes.changed), sorted(changes.removed)
    return ([k for k, rules in services.items() if old.get(k) is not rules],
            [k for k in old if k not in services])


@dataclass
class _Family:
    context: Hashable
    views: dict[str, ServicePortView]  # the views the rules were rendered from
    rules: Layered  # the last rules returned (handed out: a version, never changed afterwards)
    sequence: int  # the NodeView they came from


class PortMemo(Generic[T]):
    """Rendered rules per service port, per IP family, reused while the port's view is the same
    (by identity first: the ViewBuilder hands back the very object when nothing changed) and the
    render context is equal. After each render, `dropped` names the ports that disappeared and
    `changes` says how the rules differ from the previous render's."""

    def __init__(self) -> None:
        self._by_family: dict[int, _Family] = {}
        self.dropped: set[str] = set()
        self.changes: RenderChanges | None = None

    def rules(self, family: int, context: Any, view: NodeView, render: Callable[[ServicePortView], T]
              ) -> Mapping[str, T]:
        """Every port's rules, by key, in the view's order. When the view lists its changes since
        the one rendered last, and no port of this family came, only those are rendered and
        nothing else is looked at."""
        memo = self._by_family.get(family)
        changes = view.changes
        if (memo is None or changes is None or changes.since != memo.sequence or memo.context != context
                or any(sp.family == family for sp in changes.added)):
            for _ in self.reuse(family, context, view, render):
                pass
            return self.output(family)
        ported = [(sp, render(sp)) for sp in changes.changed if sp.family == family]
        gone = {key for key in changes.removed if key in memo.views}
        rules = memo.rules.updated({**{sp.key: r for sp, r in ported}, **dict.fromkeys(gone)})
        for sp, _ in ported:
            memo.views[sp.key] = sp
        for key in gone:
            del memo.views[key]
        self.dropped = gone
        self.changes = RenderChanges(memo.rules, frozenset(sp.key for sp, _ in ported), frozenset(gone))
        memo.rules, memo.sequence = rules, view.sequence
        return rules

    def output(self, family: int) -> Mapping[str, T]:
        """The rules the last render of this family returned (what `changes` are relative to)."""
        memo = self._by_family.get(family)
        return memo.rules if memo else Layered()

    def reuse(self, family: int, context: Any, view: NodeView,
              render: Callable[[ServicePortView], T]) -> Iterator[tuple[str, T]]:
        """(key, rules) per port of the family, comparing every port and rendering only new or
        changed ones; the memo is updated when the iteration completes."""
        memo = self._by_family.get(family)
        old_views, old_rules = (memo.views, memo.rules) if memo and memo.context == context else ({}, {})
        views: dict[str, ServicePortView] = {}
        rules: dict[str, T] = {}
        rendered: set[str] = set()
        for sp in view.family(family):
            old = old_views.get(sp.key)
            if old is not None and (old is sp or old == sp):
                r = old_rules[sp.key]
            else:
                r = render(sp)
                rendered.add(sp.key)
            views[sp.key], rules[sp.key] = sp, r
            yield sp.key, r
        self.dropped = set(memo.views if memo else ()) - set(views)  # the context aside: what went
        self.changes = RenderChanges(memo.rules if memo else Layered(), frozenset(rendered), frozenset(self.dropped))
        self._by_family[family] = _Family(context, views, Layered(rules), view.sequence)

"""What every dataplane backend shares: its error type, the result of a sync, and the per-service-port
memo that makes successive renders cost only what changed.

Invariant: pure (no kernel I/O); the memo only ever returns what rendering would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, Hashable, Iterable, Iterator, TypeVar

from .view import ServicePortView

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


class PortMemo(Generic[T]):
    """Rendered rules per service port, per IP family, reused while the port's view is the same
    (by identity first: the ViewBuilder hands back the very object when nothing changed) and the
    render context is equal. `dropped` names the ports that disappeared in the last pass."""

    def __init__(self) -> None:
        self._by_family: dict[int, tuple[Hashable, dict[str, tuple[ServicePortView, T]]]] = {}
        self.dropped: set[str] = set()

    def reuse(self, family: int, context: Any, ports: Iterable[ServicePortView],
              render: Callable[[ServicePortView], T]) -> Iterator[tuple[str, T]]:
        """(key, rules) per port, rendering only new or changed ones; the memo is updated when the
        iteration completes."""
        old_context, memo = self._by_family.get(family, (None, {}))
        if old_context != context:
            memo = {}
        fresh: dict[str, tuple[ServicePortView, T]] = {}
        for sp in ports:
            old = memo.get(sp.key)
            rules = old[1] if old and (old[0] is sp or old[0] == sp) else render(sp)
            fresh[sp.key] = (sp, rules)
            yield sp.key, rules
        self._by_family[family] = (context, fresh)
        self.dropped = set(memo) - set(fresh)

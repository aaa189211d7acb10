"""Layered: a read-only mapping whose next version costs what changed, for state that is handed
out whole at every change (the DNS zone, the node view's ports, the rendered rules per port) and
must stay valid for whoever still holds the previous version.

Invariant: pure, standard library only. A version is never changed after it is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator

_GONE = object()


class Layered(Mapping):
    """Small dicts of changes over a shared base dict. `None` in the changes removes a key.
    Changes go into `top` (copied per version, so kept small), top into `mid` now and then, and
    mid into a new base only once in very many changes (the one copy of the whole map).

    Iteration follows the base's order, each key with its latest value (a base key removed and
    added again included), then the keys the base does not hold: a version that only replaced or
    removed values iterates as its base did, which is what the rendered rules rely on."""

    __slots__ = ("base", "mid", "top")
    TOP = 4096
    MID = 65536

    def __init__(self, base: dict | None = None, mid: dict | None = None, top: dict | None = None) -> None:
        self.base = {} if base is None else base
        self.mid = {} if mid is None else mid
        self.top = {} if top is None else top

    def get(self, key, default=None):
        value = self.top.get(key, _GONE)
        if value is _GONE:
            value = self.mid.get(key, _GONE)
            if value is _GONE:
                return self.base.get(key, default)
        return default if value is None else value

    def __getitem__(self, key) -> Any:
        value = self.get(key, _GONE)
        if value is _GONE:
            raise KeyError(key)
        return value

    def __contains__(self, key) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        return sum(1 for _ in self.items())

    def __iter__(self) -> Iterator:
        return (key for key, _ in self.items())

    def items(self):  # type: ignore[override] - a generator, in the order described above
        top, mid, base = self.top, self.mid, self.base
        if not top and not mid:
            yield from base.items()
            return
        for key, value in base.items():
            newer = top.get(key, _GONE)
            if newer is _GONE:
                newer = mid.get(key, _GONE)
            if newer is _GONE:
                yield key, value
            elif newer is not None:
                yield key, newer
        for key, value in mid.items():
            if key not in base:
                value = top.get(key, value)
                if value is not None:
                    yield key, value
        for key, value in top.items():
            if value is not None and key not in base and key not in mid:
                yield key, value

    def values(self):  # type: ignore[override]
        return (value for _, value in self.items())

    def updated(self, changes: dict) -> "Layered":
        if not changes:
            return self
        top = {**self.top, **changes}
        if len(top) <= self.TOP:
            return Layered(self.base, self.mid, top)
        mid = {**self.mid, **top}
        if len(mid) <= max(self.MID, len(self.base) // 8):
            return Layered(self.base, mid)
        return Layered(dict(Layered(self.base, mid).items()))  # a Python loop: a reader's thread still runs

    def pruned(self, keep) -> "Layered":
        """The same map without the keys `keep(key)` refuses (one copy of the whole map)."""
        return Layered({k: v for k, v in self.items() if keep(k)})

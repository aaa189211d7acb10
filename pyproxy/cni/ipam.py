"""host-local IPAM with the reference plugin's on-disk format.

Invariant: the directory `<dataDir>/<network>/` is laid out exactly as containernetworking's
host-local lays it out, so a node can switch between that plugin and ours in either direction:

* one file per allocated address, named by the address, holding `<containerID>\\r\\n<ifname>`;
* `last_reserved_ip.<N>` holding the last address handed out from range set N (the next search
  starts after it, so a freed address is not reused at once);
* a `lock` file; every read-modify-write holds an exclusive flock on it.

Files with only a container ID (written by old reference versions) still match on release.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from typing import Iterator

from .config import HostLocalConf, IPAddress, Range
from .errors import INTERNAL, CniError

LINE_BREAK = "\r\n"


class Store:
    def __init__(self, directory: str) -> None:
        self.dir = directory

    @contextlib.contextmanager
    def locked(self) -> Iterator["Store"]:
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o750)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self
        finally:
            os.close(fd)  # closing drops the flock

    def _path(self, ip: IPAddress) -> str:
        return os.path.join(self.dir, str(ip))

    def reserve(self, ip: IPAddress, container_id: str, ifname: str, range_set: int) -> bool:
        try:
            fd = os.open(self._path(ip), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", newline="") as f:
            f.write(f"{container_id}{LINE_BREAK}{ifname}")
        with open(os.path.join(self.dir, f"last_reserved_ip.{range_set}"), "w") as f:
            f.write(str(ip))
        return True

    def last_reserved(self, range_set: int) -> IPAddress | None:
        try:
            with open(os.path.join(self.dir, f"last_reserved_ip.{range_set}")) as f:
                return ipaddress.ip_address(f.read().strip())
        except (OSError, ValueError):
            return None

    def allocations(self) -> dict[IPAddress, tuple[str, str]]:
        """Every allocated address with its (containerID, ifname); ifname is '' in old files."""
        out: dict[IPAddress, tuple[str, str]] = {}
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return out
        for name in names:
            try:
                ip = ipaddress.ip_address(name)
            except ValueError:
                continue  # lock, last_reserved_ip.N
            try:
                with open(self._path(ip), newline="") as f:
                    owner, _, ifname = f.read().strip().partition(LINE_BREAK)
            except FileNotFoundError:
                continue
            out[ip] = (owner.strip(), ifname.strip())
        return out

    def owned_by(self, container_id: str, ifname: str) -> list[IPAddress]:
        return [ip for ip, (owner, name) in self.allocations().items()
                if owner == container_id and name in (ifname, "")]

    def release(self, ip: IPAddress) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(ip))

    def release_owner(self, container_id: str, ifname: str) -> list[IPAddress]:
        released = self.owned_by(container_id, ifname)
        for ip in released:
            self.release(ip)
        return released


def _ip(value: int, version: int) -> IPAddress:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def _candidates(ranges: tuple[Range, ...], last: IPAddress | None) -> Iterator[tuple[Range, IPAddress]]:
    """Every address of the range set once, starting right after `last`, wrapping around."""
    spans = [(r, int(r.start), int(r.end)) for r in ranges]
    first_span, begin = 0, spans[0][1]
    for i, (r, _, _) in enumerate(spans):
        if last is not None and last in r:
            first_span, begin = i, int(last) + 1
            break
    n = len(spans)
    for step in range(n + 1):
        r, lo, hi = spans[(first_span + step) % n]
        if step == 0:
            values = range(max(begin, lo), hi + 1)
        elif step == n:  # back at the first span: its head, before where we started
            values = range(lo, min(begin, hi + 1))
        else:
            values = range(lo, hi + 1)
        for value in values:
            yield r, _ip(value, r.subnet.version)


def allocate(conf: HostLocalConf, container_id: str, ifname: str) -> list[tuple[Range, IPAddress]]:
    """One address from each range set, atomically: either all are reserved or none is."""
    store = Store(conf.data_dir)
    taken: list[tuple[Range, IPAddress]] = []
    with store.locked():
        existing = store.owned_by(container_id, ifname)
        for index, ranges in enumerate(conf.ranges):
            already = [ip for ip in existing if any(ip in r for r in ranges)]
            if already:
                for _, ip in taken:
                    store.release(ip)
                raise CniError(INTERNAL, f"{already[0]} has been allocated to {container_id}, "
                               "duplicate allocation is not allowed")
            gateways = {r.gateway for r in ranges}
            for r, ip in _candidates(ranges, store.last_reserved(index)):
                if ip not in gateways and store.reserve(ip, container_id, ifname, index):
                    taken.append((r, ip))
                    break
            else:
                for _, ip in taken:
                    store.release(ip)
                span = ", ".join(f"{r.start}-{r.end}" for r in ranges)
                raise CniError(INTERNAL, f"no IP addresses available in range set: {span}")
    return taken


def release(conf: HostLocalConf, container_id: str, ifname: str) -> list[IPAddress]:
    store = Store(conf.data_dir)
    with store.locked():
        return store.release_owner(container_id, ifname)


def exhausted(conf: HostLocalConf) -> bool:
    """True when some range set has no free address left (used by STATUS)."""
    store = Store(conf.data_dir)
    with store.locked():
        used = set(store.allocations())
    for ranges in conf.ranges:
        free = 0
        for r in ranges:
            size = int(r.end) - int(r.start) + 1
            taken = sum(1 for ip in used if ip in r) + (1 if r.gateway in r and r.gateway not in used else 0)
            free += size - taken
        if free <= 0:
            return True
    return False

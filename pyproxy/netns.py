"""Enter network namespaces from Python, per thread.

setns(2) on a network namespace only moves the calling thread; sockets keep the namespace they
were created in, and children forked from that thread start in it. That is enough to create
sockets or run commands "inside" a pod without a helper process. Python 3.11 has no os.setns,
so this goes through libc with ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from typing import Iterator

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name_or_path: str) -> str:
    """A namespace given by `ip netns` name or by path (as CNI_NETNS is)."""
    return name_or_path if "/" in name_or_path else os.path.join(NETNS_RUN_DIR, name_or_path)


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name_or_path: str) -> Iterator[None]:
    """Run the body with this thread inside the namespace, then come back."""
    target = os.open(netns_path(name_or_path), os.O_RDONLY | os.O_CLOEXEC)
    home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(target)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(target)
        os.close(home)


@contextlib.contextmanager
def scratch() -> Iterator[str]:
    """Run the body in a new, empty namespace, deleted afterwards: where `diff` loads the expected
    rules to read them back in the kernel's own words."""
    import subprocess  # not at the top: the CNI plugin imports this module and never needs it
    import uuid

    name = f"pyproxy-diff-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        with entered(name):
            yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)

"""Helpers shared by the benchmark scripts."""

import subprocess
import uuid


def ns_add() -> str:
    """A network namespace for one measurement (the caller deletes it with ns_del)."""
    name = f"pxb-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name


def ns_del(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], check=False)



def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: Linux carries the forking parent's
    peak into the child's ru_maxrss across exec."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024

"""What kube-proxy sets on the node before its first sync, besides rules: the process's OOM
score and the conntrack sysctls. Each step that cannot be done (a read-only /proc/sys in a
container, a sysctl a network namespace does not own) is a warning, never a crash.

Runs in the caller's network namespace: /proc/sys/net shows the namespace of the thread that
opens it.
"""

from __future__ import annotations

import os

from .config import ProxyConfig


def write(path: str, value: str) -> str | None:
    """Write a /proc or /sys value; the reason when it cannot be done, None when done."""
    try:
        with open(path) as f:
            if f.read().strip() == value:
                return None
        with open(path, "w") as f:
            f.write(value)
        return None
    except OSError as err:
        return f"{path}: {err.strerror}"


def set_oom_score_adj(value: int) -> str | None:
    return write("/proc/self/oom_score_adj", str(value))


def conntrack_settings(config: ProxyConfig, cpus: int | None = None) -> dict[str, str]:
    """kube-proxy's conntrack sysctls for this configuration (zero values leave the kernel's)."""
    out = {}
    cpus = cpus or os.cpu_count() or 1
    if config.conntrack_max_per_core > 0:
        out["net/netfilter/nf_conntrack_max"] = str(max(config.conntrack_max_per_core * cpus, config.conntrack_min))
    for key, seconds in (("nf_conntrack_tcp_timeout_established", config.conntrack_tcp_established_timeout),
                         ("nf_conntrack_tcp_timeout_close_wait", config.conntrack_tcp_close_wait_timeout),
                         ("nf_conntrack_udp_timeout", config.conntrack_udp_timeout),
                         ("nf_conntrack_udp_timeout_stream", config.conntrack_udp_stream_timeout)):
        if seconds > 0:
            out[f"net/netfilter/{key}"] = str(int(seconds))
    if config.conntrack_tcp_be_liberal:
        out["net/netfilter/nf_conntrack_tcp_be_liberal"] = "1"
    return out


# kube-proxy's words for its node event when /sys is read-only (it cannot raise the conntrack
# hashsize there): reason readOnlySysFS, this note
READ_ONLY_SYSFS = "readOnlySysFS"
READ_ONLY_SYSFS_NOTE = ("CRI error: /sys is read-only: cannot modify conntrack limits, problems may arise later "
                        "(If running Docker, see docker issue #24000)")


def read_only(mount_point: str, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Is this mount point mounted read-only here (a container's /sys or /proc/sys)?"""
    found = False
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                if len(fields) > 5 and fields[4] == mount_point:
                    found = "ro" in fields[5].split(",")  # the last mount there is the one seen
    except OSError:
        pass
    return found


def conntrack_limits_blocked(config: ProxyConfig, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """kube-proxy's readOnlySysFS case: it would set the conntrack maximum, and /sys is read-only
    (kube-proxy checks /sys; a read-only /proc/sys, where the limit itself is, blocks it too)."""
    return config.conntrack_max_per_core > 0 and (read_only("/sys", mountinfo) or read_only("/proc/sys", mountinfo))


def apply_conntrack(config: ProxyConfig) -> list[str]:
    """Set them; the warnings for those that could not be set. The module's hashsize (a host-wide
    /sys/module parameter kube-proxy also raises) is not touched: it is not the namespace's."""
    problems = []
    for key, value in conntrack_settings(config).items():
        problem = write("/proc/sys/" + key, value)
        if problem:
            problems.append(f"conntrack: cannot set {key.replace('/', '.')} to {value} ({problem.split(': ', 1)[1]})")
    return problems

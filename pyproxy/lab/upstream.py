"""Upstream Kubernetes programs, built here from their Go modules (build-upstream.sh beside this
file) into a cache outside the work tree, and found there by the lab, the tests and the benches.

The versions are pinned in the script; the cache is `$PYPROXY_UPSTREAM_CACHE` or
`~/.cache/pyproxy/upstream`, one folder per Kubernetes version. A component is built only when its
binary is missing, so a warm cache costs nothing.
"""

from __future__ import annotations

import os
import subprocess

K8S_VERSION = "v1.37.2"
SCRIPT = os.path.join(os.path.dirname(__file__), "build-upstream.sh")
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")


class UpstreamError(RuntimeError):
    pass


def cache_dir() -> str:
    root = os.environ.get("PYPROXY_UPSTREAM_CACHE") or os.path.expanduser("~/.cache/pyproxy/upstream")
    return os.path.join(root, K8S_VERSION)


def binary(name: str) -> str:
    return os.path.join(cache_dir(), "bin", name)


def built(*components: str) -> bool:
    return all(os.path.exists(os.path.join(cache_dir(), "bin", f".{c}.done")) for c in components)


def ensure(*components: str, quiet: bool = False) -> str:
    """Build what is missing (minutes when cold: Go downloads and compiles); return the bin dir."""
    components = components or CONTROL_PLANE
    if not built(*components):
        env = {**os.environ, "K8S_VERSION": K8S_VERSION}
        proc = subprocess.run(["bash", SCRIPT, *components], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE if quiet else None)
        if proc.returncode:
            tail = (proc.stderr or "").strip().splitlines()[-5:]
            raise UpstreamError(f"building {' '.join(components)} failed (exit {proc.returncode})"
                                + (": " + " | ".join(tail) if tail else ""))
    return os.path.join(cache_dir(), "bin")

"""Shared by the tests against upstream's programs: objects, traffic checks, waiting."""

from __future__ import annotations

import os
import time
from typing import Any

from tests import factories


def service(name: str, selector: str, cluster_ip: str, ports: list[dict] | None = None, **spec: Any) -> dict:
    return factories.service(name, cluster_ip, ports or [{"port": 80, "targetPort": 80}], namespace="default",
                             api_version=True, selector={"app": selector}, **spec)


def set_lb_ingress(api, name: str, ip: str, namespace: str = "default") -> None:
    """What a cloud controller writes: the load balancer's address, through the status subresource."""
    api.patch_status("Service", name, {"loadBalancer": {"ingress": [{"ip": ip}]}}, namespace)


def answered_by(lab, src: str, ip: str, port: int, n: int = 8, timeout: float = 0.5, proto: str = "tcp") -> set[str]:
    """The pods that answered n connections ("-" for each that failed)."""
    out = set()
    for _ in range(n):
        try:
            out.add(lab.request(src, ip, port, proto, timeout=timeout).pod)
        except OSError:
            out.add("-")
    return out


def eventually(check, timeout: float = 2.0, step: float = 0.05) -> float:
    """Seconds until check() held; fails the test after `timeout`."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(step)


def proxy_log(lab, name: str) -> str:
    """The log of a proxy the lab started: a node name means that node's pyproxy."""
    if "@" not in name and not name.startswith(("pyproxy-", "kube-proxy-")):
        name = f"pyproxy-{name}"
    try:
        with open(os.path.join(lab.dir, "proxies", f"{name}.log")) as f:
            return f.read()
    except FileNotFoundError:
        return ""

"""pyproxy's lab for your own integration tests: a cluster of network namespaces with pods and
Services, programmed by pyproxy, that a test talks to with real packets.

The public API is this module (kept small and stable); everything under pyproxy.lab is private.

    from pyproxy.testing import Cluster

    with Cluster({"nodes": [{"name": "n1", "podCIDR": "10.244.1.0/24"}],
                  "pods": [{"name": "web", "node": "n1", "labels": {"app": "web"}},
                           {"name": "client", "node": "n1"}]}) as cluster:
        cluster.apply([service("web", {"app": "web"}, "10.96.0.10", 80)])
        assert cluster.request("client", "10.96.0.10", 80).pod == "web"

With pytest, enable the plugin (`-p pyproxy.testing.plugin`, or `pyproxy_lab = true` in the ini
file) and take the `pyproxy_cluster` fixture instead: see the README, "Write your own test".
"""

from __future__ import annotations

import os
import subprocess
import uuid
from typing import Any

from ..lab.lab import Reply

__all__ = ["Cluster", "Reply", "LabUnavailable", "service", "unavailable_reason"]


class LabUnavailable(RuntimeError):
    """The lab cannot run here (not root, or the kernel lacks what it needs): skip, not fail."""


def unavailable_reason() -> str | None:
    """Why a lab cannot run on this machine, or None."""
    if os.geteuid() != 0:
        return "the pyproxy lab needs root (it creates network namespaces)"
    if not os.path.isdir("/proc/sys/net/bridge"):
        return "the kernel has no br_netfilter (modprobe br_netfilter)"
    for tool in ("ip", "iptables-restore"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            return f"{tool} is not installed"
    return None


def service(name: str, selector: dict[str, str], cluster_ip: str, port: int, target_port: int | None = None,
            protocol: str = "TCP", namespace: str = "default", **spec: Any) -> dict[str, Any]:
    """A Service object (one port), for Cluster.apply; `spec` adds any other spec field."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": namespace, "name": name},
            "spec": {"clusterIP": cluster_ip, "selector": dict(selector),
                     "ports": [{"port": port, "targetPort": target_port or port, "protocol": protocol}], **spec}}


class Cluster:
    """A lab built from a spec (a dict or a YAML file's path), its Services programmed by pyproxy.

    spec: nodes (name, podCIDR), pods (name, node, labels, ports, command), ipv6, and the lab's
    networks; see examples/lab.yaml. backend: iptables, nftables (or ipvs where the kernel has
    it); iptables_variant: auto, legacy, nft. control_plane="kubernetes" runs upstream's API
    server instead (Services then go through it, and `kubectl` works).
    """

    def __init__(self, spec: dict[str, Any] | str, backend: str = "iptables", iptables_variant: str = "auto",
                 control_plane: str = "none", name: str | None = None) -> None:
        from ..lab.spec import load_spec, parse_spec

        reason = unavailable_reason()
        if reason:
            raise LabUnavailable(reason)
        raw = dict(spec) if isinstance(spec, dict) else None
        if raw is None:
            import yaml

            with open(spec) as f:
                raw = yaml.safe_load(f)
        raw["name"] = name or raw.get("name") or unique_name()
        raw["controlPlane"] = control_plane
        self._spec = parse_spec(raw) if raw else load_spec(spec)
        self._raw = raw
        self.backend, self.iptables_variant = backend, iptables_variant
        self._lab = None
        self._dataplane = None
        self._services: list[dict[str, Any]] = []

    # -- lifecycle ---------------------------------------------------------------------------------

    def up(self) -> "Cluster":
        from ..lab.lab import Lab

        self._lab = Lab(self._spec).up(self._raw)
        try:
            if self._lab.cp:
                from ..lab.proxies import deploy_pyproxy, start_pyproxy

                kube, config = deploy_pyproxy(self._lab, {"mode": self.backend,
                                                          "pyproxy": {"iptablesVariant": self.iptables_variant}})
                for node in self._spec.nodes:
                    start_pyproxy(self._lab, node.name, kube, config)
            else:
                from ..config import ProxyConfig
                from ..lab.dataplane import LabDataplane

                cidrs = (self._spec.cluster_cidr,) + ((self._spec.CLUSTER_CIDR6,) if self._spec.ipv6 else ())
                self._dataplane = LabDataplane(self._lab, ProxyConfig(
                    mode=self.backend, cluster_cidrs=cidrs, iptables_variant=self.iptables_variant))
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Remove every namespace, process and file of the lab (safe to call twice)."""
        if self._lab is not None:
            self._lab.down()
            self._lab = None

    def __enter__(self) -> "Cluster":
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- services --------------------------------------------------------------------------------

    def apply(self, services: list[dict[str, Any]]) -> None:
        """Make these the cluster's Services (the previous ones not listed are removed); their
        EndpointSlices come from the pods their selectors match."""
        lab = self._need()
        if lab.cp:
            current = {s["metadata"]["name"]: s for s in services}
            for old in self._services:
                if old["metadata"]["name"] not in current:
                    lab.cp.api.delete("Service", old["metadata"]["name"], old["metadata"].get("namespace", "default"))
            for svc in services:
                lab.cp.api.apply(svc)
        else:
            self._dataplane.apply(services)
        self._services = list(services)

    def remove(self, name: str, namespace: str = "default") -> None:
        self.apply([s for s in self._services if (s["metadata"]["name"], s["metadata"].get("namespace", "default"))
                    != (name, namespace)])

    # -- traffic ---------------------------------------------------------------------------------

    def request(self, src: str, ip: str, port: int, proto: str = "tcp", timeout: float = 2.0) -> Reply:
        """Connect from a pod, a node or "external"; which pod answered and the source it saw.
        Raises ConnectionRefusedError, TimeoutError or another OSError as a client would see."""
        return self._need().request(src, ip, port, proto, timeout)

    def exec(self, who: str, argv: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command inside a pod, a node or "external" (its network namespace)."""
        ns = self._need().namespace_of(who)
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=check,
                              timeout=timeout)

    def pod_ip(self, pod: str) -> str:
        return self._need().pods[pod].ip

    def node_ip(self, node: str) -> str:
        return str(self._spec.node(node).ip)

    @property
    def external_ip(self) -> str:
        return str(self._spec.external_ip)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """kubectl against the cluster's API server (control_plane="kubernetes" only)."""
        lab = self._need()
        if lab.cp is None:
            raise RuntimeError('kubectl needs Cluster(..., control_plane="kubernetes")')
        return lab.cp.kubectl(*args, stdin=stdin).stdout

    def _need(self):
        if self._lab is None:
            raise RuntimeError("the cluster is not up (use it in a with block, or call up())")
        return self._lab


def unique_name() -> str:
    """A lab name no other test (also under pytest-xdist) uses: at most 8 characters."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "").removeprefix("gw")
    return f"u{worker[:2]}{uuid.uuid4().hex[:8 - 1 - len(worker[:2])]}"

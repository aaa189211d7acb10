"""Build and tear down a lab: one namespace per node, pod and external client, and a "switch".

    ext (external client) ─┐
    node1 eth0 ────────────┼── br0 in the switch namespace (the "physical" network)
    node2 eth0 ────────────┘
    node1: cni0 bridge ── pods (veths made by pyproxy-bridge, exec'd like a runtime does)

Every name we create starts with `pxl-<lab>-`, and `down` removes exactly those, so it also
cleans up after a crash or a half-built lab. Nothing is created in the caller's namespace except
files under /run/pyproxy-lab/<lab>/.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import netns
from . import kubelet
from .controlplane import ControlPlane, ProcessTable, exited, runs
from .runtime import CniRuntime
from .spec import LabSpec, PodSpec, parse_spec, spec_as_raw

LAB_ROOT = "/run/pyproxy-lab"
ECHO_MODULE = "pyproxy.lab.echo"


class LabError(RuntimeError):
    pass


@dataclass(frozen=True)
class Reply:
    """What an echo server said: which pod answered, and the source address it saw."""

    pod: str
    client: str
    client_port: int
    port: int


@dataclass
class PodState:
    name: str
    node: str
    netns: str
    ip: str
    container_id: str
    pid: int = 0
    ip6: str = ""
    ports: list[int] = field(default_factory=list)
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)  # the pod's own program instead of the echo server


def run(cmd: list[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if check and proc.returncode:
        raise LabError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc


def ip_batch(ns: str, lines: list[str]) -> None:
    """Several `ip` commands in one exec, inside namespace `ns`."""
    run(["ip", "-n", ns, "-batch", "-"], stdin="\n".join(lines) + "\n")


def sysctl(ns: str, values: dict[str, str]) -> None:
    # /proc/sys/net shows the namespace of the thread that opens it.
    with netns.entered(ns):
        for key, value in values.items():
            try:
                with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                    f.write(value)
            except FileNotFoundError:
                hint = " (load br_netfilter: modprobe br_netfilter; setup.sh does)" if ".bridge." in key else ""
                raise LabError(f"sysctl {key} is not available in this kernel{hint}") from None


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(netns.NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def _is_our_echo(pid: int, pod: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return ECHO_MODULE.encode() in args and pod.encode() in args


def cni_bin_dir() -> str:
    """Where `pyproxy-bridge` is installed next to this interpreter (not a pyenv shim)."""
    here = os.path.dirname(sys.executable)
    if os.access(os.path.join(here, "pyproxy-bridge"), os.X_OK):
        return here
    found = shutil.which("pyproxy-bridge")
    if not found:
        raise LabError("pyproxy-bridge is not installed (pip install the pyproxy package)")
    return os.path.dirname(os.path.realpath(found))


class Lab:
    def __init__(self, spec: LabSpec, root: str = LAB_ROOT) -> None:
        self.spec = spec
        self.dir = os.path.join(root, spec.name)
        self.prefix = f"pxl-{spec.name}-"
        self.pods: dict[str, PodState] = {}
        self.spec_raw: dict[str, Any] = {}
        self._echo_procs: dict[str, subprocess.Popen] = {}
        self._own_procs: dict[str, subprocess.Popen] = {}
        # programs the lab runs on its nodes (pyproxy, kube-proxy daemons), stopped by `down`
        self.processes = ProcessTable(os.path.join(self.dir, "processes.json"))
        self.cp: ControlPlane | None = None
        if spec.control_plane == "kubernetes":
            cidrs = [str(spec.service_cidr)] + ([str(spec.SERVICE_CIDR6)] if spec.ipv6 else [])
            self.cp = ControlPlane(os.path.join(self.dir, "cp"), self.cp_ns, str(spec.control_plane_ip), cidrs,
                                   str(spec.cluster_cidr))

    # -- names ---------------------------------------------------------------------------------

    @property
    def switch_ns(self) -> str:
        return self.prefix + "net"

    @property
    def external_ns(self) -> str:
        return self.prefix + "ext"

    @property
    def cp_ns(self) -> str:
        """The control plane's namespace (labs with `controlPlane: kubernetes`)."""
        return self.prefix + "cp"

    def node_ns(self, node: str) -> str:
        return f"{self.prefix}n-{node}"

    def pod_ns(self, pod: str) -> str:
        return f"{self.prefix}p-{pod}"

    def shadow_ns(self, name: str) -> str:
        return f"{self.prefix}s-{name}"

    def add_shadow(self, name: str) -> str:
        """A namespace of its own on the lab's network (no pods behind it), where a second proxy
        for a node can run and write its rules without touching the node: for side-by-side and
        differential runs. Returns its name."""
        ns = self.shadow_ns(name)
        index = 50 + len([n for n in list_netns() if n.startswith(self.prefix + "s-")])
        self._add_ns(ns)
        port = f"sh{index}"
        ip_batch(self.switch_ns, [f"link add {port} type veth peer name eth0 netns {ns}",
                                  f"link set {port} master br0", f"link set {port} up"])
        v6 = [f"addr add {self.spec.NODE_NETWORK6.network_address + index}/64 dev eth0 nodad"] if self.spec.ipv6 else []
        ip_batch(ns, [f"addr add {self.spec.node_network.network_address + index}/{self.spec.node_network.prefixlen} "
                      "dev eth0", *v6, "link set eth0 up"])
        return ns

    def exec_node(self, node: str, argv: list[str]) -> str:
        """Run a command in a node's namespace (or a shadow's, by its namespace name); its stdout."""
        ns = node if node.startswith(self.prefix) else self.node_ns(node)
        return run(["ip", "netns", "exec", ns, *argv]).stdout

    def namespace_of(self, who: str) -> str:
        """A pod name, a node name, or "external"."""
        if who in ("external", "ext"):
            return self.external_ns
        if who in self.pods:
            return self.pods[who].netns
        if any(n.name == who for n in self.spec.nodes):
            return self.node_ns(who)
        raise LabError(f"no pod or node named {who!r} in lab {self.spec.name!r}")

    def runtime(self, node: str) -> CniRuntime:
        base = os.path.join(self.dir, "nodes", node)
        return CniRuntime(os.path.join(base, "net.d"), (cni_bin_dir(),), os.path.join(base, "cache"),
                          host_netns=self.node_ns(node))

    # -- state -----------------------------------------------------------------------------------

    def _save(self) -> None:
        state = {"spec": self.spec_raw, "pods": {name: asdict(p) for name, p in self.pods.items()}}
        tmp = os.path.join(self.dir, "state.json.tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, os.path.join(self.dir, "state.json"))

    @classmethod
    def load(cls, name: str, root: str = LAB_ROOT) -> "Lab":
        path = os.path.join(root, name, "state.json")
        try:
            with open(path) as f:
                state = json.load(f)
        except FileNotFoundError:
            raise LabError(f"lab {name!r} is not up (no {path})") from None
        lab = cls(parse_spec(state["spec"]), root)
        lab.spec_raw = state["spec"]
        lab.pods = {name: PodState(**p) for name, p in state["pods"].items()}
        return lab

    # -- up ----------------------------------------------------------------------------------------

    def up(self, spec_raw: dict[str, Any] | None = None, replace: bool = False) -> "Lab":
        """Build the lab. With replace, a lab of the same name left by an earlier run that was
        killed (its namespaces, state and processes) is taken down first instead of refused."""
        if replace:
            Lab.down_by_name(self.spec.name, os.path.dirname(self.dir))
        if any(ns.startswith(self.prefix) for ns in list_netns()) or os.path.exists(self.dir):
            raise LabError(f"lab {self.spec.name!r} is already up (or was left half-built): "
                           f"run `pyproxy lab down --name {self.spec.name}` first")
        self.spec_raw = spec_raw or spec_as_raw(self.spec)
        os.makedirs(self.dir)
        try:
            self._build_network()
            self._save()
            if self.cp:
                self._start_control_plane()
            for pod in self.spec.pods:
                self.add_pod(pod, wait=False)
            self._wait_for_echo(list(self.pods.values()))
            for pod in self.pods.values():
                self._report_status(pod, ready=True)
        except BaseException:
            self.down()
            raise
        return self

    def _add_ns(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        ip_batch(name, ["link set lo up"])
        if self.spec.ipv6:
            # IPv6 link-local addresses are unusable for a second or two while duplicate address
            # detection runs; a lab's addresses are unique by construction, so skip it everywhere.
            sysctl(name, {"net.ipv6.conf.default.accept_dad": "0", "net.ipv6.conf.all.accept_dad": "0"})

    def _build_network(self) -> None:
        spec = self.spec
        prefix_len = spec.node_network.prefixlen
        self._add_ns(self.switch_ns)
        ip_batch(self.switch_ns, ["link add br0 type bridge", "link set br0 up"])
        uplinks = ([(self.node_ns(n.name), n.ip, n.ip6) for n in spec.nodes]
                   + [(self.external_ns, spec.external_ip, spec.external_ip6)])
        if self.cp:
            uplinks.append((self.cp_ns, spec.control_plane_ip, spec.NODE_NETWORK6.network_address + 2))
        for i, (ns, address, address6) in enumerate(uplinks):
            self._add_ns(ns)
            ip_batch(self.switch_ns, [f"link add port{i} type veth peer name eth0 netns {ns}",
                                      f"link set port{i} master br0", f"link set port{i} up"])
            v6 = [f"addr add {address6}/64 dev eth0 nodad"] if spec.ipv6 else []
            ip_batch(ns, [f"addr add {address}/{prefix_len} dev eth0", *v6, "link set eth0 up"])
        for node in spec.nodes:
            ns = self.node_ns(node.name)
            sysctl(ns, {
                "net.ipv4.ip_forward": "1",
                # A node that routes a packet back out its uplink sends an ICMP redirect, which
                # spends the ICMP rate-limit token that a REJECT's port-unreachable then needs.
                "net.ipv4.conf.all.send_redirects": "0",
                "net.ipv4.conf.default.send_redirects": "0",
                "net.ipv4.conf.eth0.send_redirects": "0",
                # The kernel allows one ICMP error per destination host per second by default;
                # tests that expect "refused" right after another error would see a timeout.
                "net.ipv4.icmp_ratelimit": "0",
                # As on a real node: bridged pod traffic goes through iptables (br_netfilter), or
                # a pod's reply to a same-bridge peer skips the Service's reverse NAT.
                "net.bridge.bridge-nf-call-iptables": "1",
                "net.bridge.bridge-nf-call-ip6tables": "1",
                "net.ipv6.conf.all.forwarding": "1",
                "net.ipv6.icmp.ratelimit": "0",
            })
            routes = [f"route add {other.pod_cidr} via {other.ip}" for other in spec.nodes if other is not node]
            # Like a real node, send what it has no route for upstream (the external side, which
            # does not forward): Service IPs are then routable, as kube-proxy expects.
            routes.append(f"route add default via {spec.external_ip}")
            if spec.ipv6:
                routes += [f"route add {other.pod_cidr6} via {other.ip6}" for other in spec.nodes if other is not node]
                routes.append(f"route add default via {spec.external_ip6}")
            ip_batch(ns, routes)
            self._write_cni_config(node.name, str(node.pod_cidr), str(node.pod_cidr6) if spec.ipv6 else "")
        # The router in front of the cluster: external/LB addresses are reached through node 1.
        ext_routes = [f"route add {spec.external_network} via {spec.nodes[0].ip}"]
        if spec.ipv6:
            ext_routes.append(f"route add {spec.EXTERNAL_NETWORK6} via {spec.nodes[0].ip6}")
        ip_batch(self.external_ns, ext_routes)

    def _start_control_plane(self) -> None:
        self.cp.start()
        for node in self.spec.nodes:
            self.cp.api.apply(kubelet.node_object(self.spec, node))
            self.cp.api.patch_status("Node", node.name, kubelet.node_status(self.spec, node))

    def _report_status(self, pod: PodState, ready: bool) -> None:
        """The kubelet's part: the pod's IPs and its Ready condition, written to the API."""
        if self.cp:
            ips = [pod.ip] + ([pod.ip6] if pod.ip6 else [])
            self.cp.api.patch_status("Pod", pod.name, kubelet.pod_status(ips, str(self.spec.node(pod.node).ip), ready),
                                     pod.namespace)

    def set_ready(self, name: str, ready: bool) -> None:
        """Flip a pod's readiness as its readiness probe would (real control plane only)."""
        self._report_status(self.pods[name], ready)

    def terminate_pod(self, name: str) -> None:
        """Delete a pod gracefully: it is terminating (deletionTimestamp set) and keeps serving
        until delete_pod, as a pod in its termination grace period does."""
        pod = self.pods[name]
        if self.cp is None:
            raise LabError("terminate_pod needs a lab with controlPlane: kubernetes")
        self.cp.api.delete("Pod", name, pod.namespace, grace=300)

    def _write_cni_config(self, node: str, pod_cidr: str, pod_cidr6: str = "") -> None:
        base = os.path.join(self.dir, "nodes", node)
        os.makedirs(os.path.join(base, "net.d"))
        conflist = {
            "cniVersion": "1.0.0",
            "name": "pyproxy-lab",
            "plugins": [{
                "type": "pyproxy-bridge",
                "bridge": "cni0",
                "isGateway": True,
                "isDefaultGateway": True,
                "hairpinMode": True,
                "ipam": {"type": "host-local",
                         "ranges": [[{"subnet": pod_cidr}]] + ([[{"subnet": pod_cidr6}]] if pod_cidr6 else []),
                         "dataDir": os.path.join(base, "ipam")},
            }],
        }
        with open(os.path.join(base, "net.d", "10-pyproxy.conflist"), "w") as f:
            json.dump(conflist, f, indent=2)

    def add_pod(self, pod: PodSpec, wait: bool = True) -> PodState:
        ns = self.pod_ns(pod.name)
        self._add_ns(ns)
        container_id = f"{self.spec.name}-{pod.name}"
        if self.cp:
            self.cp.api.apply(kubelet.pod_object(pod.name, pod.namespace, pod.node, pod.labels, list(pod.ports)))
        result = self.runtime(pod.node).add(container_id, netns.netns_path(ns))
        addresses = [ip["address"].split("/")[0] for ip in result["ips"]]
        state = PodState(pod.name, pod.node, ns, addresses[0], container_id, ports=list(pod.ports),
                         namespace=pod.namespace, labels=dict(pod.labels),
                         ip6=next((a for a in addresses if ":" in a), ""), command=list(pod.command))
        state.pid = self._start_echo(state)
        self.pods[pod.name] = state
        self._save()
        if wait:
            self._wait_for_echo([state])
            self._report_status(state, ready=True)
        return state

    def _start_echo(self, pod: PodState) -> int:
        log = open(os.path.join(self.dir, f"echo-{pod.name}.log"), "w")
        argv = pod.command or [sys.executable, "-m", ECHO_MODULE, "--name", pod.name,
                               "--ports", ",".join(map(str, pod.ports))]
        with netns.entered(pod.netns):
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log if pod.command else subprocess.PIPE,
                                    stderr=log, start_new_session=True)
        log.close()
        if pod.command:
            self._own_procs[pod.name] = proc  # no readiness handshake: the user's program
        else:
            self._echo_procs[pod.name] = proc
        return proc.pid

    def _wait_for_echo(self, pods: list[PodState]) -> None:
        for pod in pods:
            proc = self._echo_procs.pop(pod.name, None)
            if proc is None:
                continue
            line = proc.stdout.readline() if proc.stdout else b""
            if proc.stdout:
                proc.stdout.close()
            if line.strip() != b"ready":
                raise LabError(f"echo server of pod {pod.name} did not start (see {self.dir}/echo-{pod.name}.log)")

    def delete_pod(self, name: str) -> None:
        pod = self.pods.pop(name)
        if self.cp:
            self.cp.api.delete("Pod", name, pod.namespace, grace=0)  # the kubelet's final delete
        self._stop_echo(pod)
        self.runtime(pod.node).delete(pod.container_id, netns.netns_path(pod.netns))
        run(["ip", "netns", "del", pod.netns], check=False)
        self._save()

    def _stop_echo(self, pod: PodState) -> None:
        own = self._own_procs.pop(pod.name, None)
        if own is not None:
            if own.poll() is None:
                own.terminate()
                try:
                    own.wait(5)
                except subprocess.TimeoutExpired:
                    own.kill()
                    own.wait()
            return
        if pod.pid and (_is_our_echo(pod.pid, pod.name) or pod.command and runs(pod.pid, pod.command)):
            os.kill(pod.pid, signal.SIGTERM)
            for _ in range(100):
                if exited(pod.pid):
                    break
                time.sleep(0.01)
            _reap(pod.pid)

    # -- down ----------------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove everything of this lab; safe to call on a half-built or crashed lab."""
        self.processes.stop_all()
        if self.cp:
            self.cp.stop()
        ProcessTable(os.path.join(self.dir, "cp", "pids.json")).stop_all()  # also without usable state
        for pod in list(self.pods.values()):
            self._stop_echo(pod)
        for proc in self._echo_procs.values():
            proc.kill()
            proc.wait()
        self._echo_procs.clear()
        removed = [ns for ns in list_netns() if ns.startswith(self.prefix)]
        for ns in removed:
            run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.pods.clear()
        return removed

    @classmethod
    def down_by_name(cls, name: str, root: str = LAB_ROOT) -> list[str]:
        try:
            lab = cls.load(name, root)
        except (LabError, ValueError, KeyError, TypeError):
            # No usable state: still remove whatever carries the lab's prefix.
            lab = cls(parse_spec({"name": name, "nodes": [{"name": "x", "podCIDR": "10.244.0.0/24"}]}), root)
        return lab.down()

    # -- traffic -------------------------------------------------------------------------------------

    def request(self, src: str, ip: str, port: int, proto: str = "tcp", timeout: float = 2.0) -> Reply:
        """Connect from a pod, node or "external" and return what the echo server answered.

        Raises ConnectionRefusedError (RST or ICMP port unreachable), TimeoutError (dropped),
        or another OSError (no route).
        """
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        kind = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}.get(proto)
        if kind is None:
            raise LabError(f"unsupported protocol {proto!r} (tcp, udp)")
        with netns.entered(self.namespace_of(src)):
            sock = socket.socket(family, kind)
        with sock:
            sock.settimeout(timeout)
            sock.connect((ip, port))
            if proto == "udp":
                sock.send(b"hello\n")
                data = sock.recv(65535)
            else:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
        if not data:
            raise ConnectionResetError(f"{ip}:{port} closed the connection without answering")
        return Reply(**json.loads(data))

    def status(self) -> dict[str, Any]:
        alive = {name: bool(p.pid and _is_our_echo(p.pid, name)) for name, p in self.pods.items()}
        return {
            "name": self.spec.name,
            "nodes": [{"name": n.name, "ip": str(n.ip), "podCIDR": str(n.pod_cidr), "netns": self.node_ns(n.name)}
                      for n in self.spec.nodes],
            "external": {"ip": str(self.spec.external_ip), "netns": self.external_ns},
            "pods": [{"name": p.name, "node": p.node, "ip": p.ip, "netns": p.netns, "echo": alive[p.name]}
                     for p in self.pods.values()],
        }


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass

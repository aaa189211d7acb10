"""A real Kubernetes node for a lab node: upstream's kubelet over containerd 2.x and Debian's
runc, inside the node's network namespace, pods networked by `pyproxy-bridge` through the CRI.

    <node dir> = <lab dir>/nodes/<node>/     (beside the lab's net.d/ conflist and ipam/)
      cni-bin/pyproxy-bridge     a symlink to the installed plugin (containerd's CNI bin_dirs),
      cni-bin/portmap            and to Debian's portmap (containernetworking-plugins)
      net.d/10-pyproxy.conflist  the lab's conflist with portmap chained: pods' hostPorts
      containerd/config.toml     root/ state/ runc/ containerd.sock, its log
      kubelet/config.yaml        root/ (--root-dir) pki/ (serving cert) logs/ kubelet.kubeconfig,
                                 resolv.conf, the node's client certificate from the lab CA

Both programs are started like every lab program (controlplane.start_process: this thread enters
the node's network namespace and the child inherits it, as `nsenter --net` does; /sys is left
alone, unlike `ip netns exec`), their PIDs kept in the node's `pids.json`. The kubelet runs with
the cgroupfs driver under a cgroup root of its own per node (`/pyproxy-<lab>-<node>`), made here in
every v1 hierarchy (this machine is cgroup v1: `failCgroupV1: false`).

`stop` removes the pods (crictl, so CNI DEL runs), stops kubelet and containerd, kills what they
left (shims of this containerd, found by its socket in their command line, and the processes in
this node's cgroups), unmounts whatever is mounted under the node directory, and removes the cgroups.
Two things land outside the node directory whatever the configuration: the shims' sockets in
/run/containerd/s (hashed by this containerd's socket path) and the kubelet's /var/log/containers
links; `stop` removes ours, and those directories once empty.

Paid for here: root has no CAP_SYS_RESOURCE on this machine, so runc cannot set the -998
oom_score_adj the kubelet asks for sandboxes (containerd: `restrict_oom_score_adj`); the kubelet's
defaults that escape --root-dir (--cert-dir, podLogsDir, volumePluginDir) are set explicitly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

import yaml

from . import images, upstream
from .controlplane import ProcessTable, _openssl, exit_status, kubeconfig, start_process

NODE_COMPONENTS = ("kubelet", "containerd", "crictl")
CGROUP_V1 = "/sys/fs/cgroup"
RUNC = "/usr/sbin/runc"
PORTMAP = "/usr/lib/cni/portmap"


class NodeError(RuntimeError):
    pass


def containerd_config(d: "NodePaths", cni_conf_dir: str) -> str:
    return f"""version = 3
root = "{d.containerd}/root"
state = "{d.containerd}/state"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{d.socket}"

[ttrpc]
  address = "{d.socket}.ttrpc"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '{images.PAUSE_IMAGE}'

[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  # no CAP_SYS_RESOURCE here (not even root may lower an oom_score_adj): the kubelet asks -998
  # for sandboxes, runc fails with "can't get final child's PID from pipe: EOF"; clamp instead
  restrict_oom_score_adj = true
  disable_apparmor = true
  tolerate_missing_hugetlb_controller = true
  disable_hugetlb_controller = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      disable_pause_image_pull = true
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '{RUNC}'
        Root = '{d.containerd}/runc'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['{d.cni_bin}']
    conf_dir = '{cni_conf_dir}'
    max_conf_num = 1
    use_internal_loopback = true

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
"""


def kubelet_config(d: "NodePaths", node_ip: str, cgroup_root: str, ca: str, cluster_dns: str) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": node_ip, "port": 10250, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
        # the lab's API server calls the kubelet (logs, exec) without a client certificate
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": ca}},
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs", "cgroupRoot": cgroup_root, "cgroupsPerQOS": True,
        "failCgroupV1": False, "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{d.socket}",
        "podLogsDir": os.path.join(d.kubelet, "logs"),
        "volumePluginDir": os.path.join(d.kubelet, "volume-plugins"),
        "resolvConf": os.path.join(d.kubelet, "resolv.conf"),
        "clusterDomain": "cluster.local", "clusterDNS": [cluster_dns],
        # several kubelets share one disk: no eviction or image GC on its fill level
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "0%", "imagefs.available": "0%",
                         "nodefs.inodesFree": "0%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "localStorageCapacityIsolation": False,
        "serializeImagePulls": False, "registerNode": True, "rotateCertificates": False,
        "nodeStatusUpdateFrequency": "4s", "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s", "fileCheckFrequency": "10s",
        "shutdownGracePeriod": "0s", "enableDebuggingHandlers": True,
        "enforceNodeAllocatable": ["pods"],
        "logging": {"format": "text"},
    }


@dataclass(frozen=True)
class NodePaths:
    root: str

    @property
    def cni_bin(self) -> str:
        return os.path.join(self.root, "cni-bin")

    @property
    def net_d(self) -> str:
        return os.path.join(self.root, "net.d")

    @property
    def containerd(self) -> str:
        return os.path.join(self.root, "containerd")

    @property
    def socket(self) -> str:
        return os.path.join(self.root, "containerd", "containerd.sock")

    @property
    def kubelet(self) -> str:
        return os.path.join(self.root, "kubelet")


def _cgroup_hierarchies(unified: bool = False) -> list[str]:
    """The v1 hierarchies mounted under /sys/fs/cgroup (cpu, memory, ..., name=systemd), and with
    `unified` the hybrid layout's cgroup2 (runc makes the container's cgroup there too)."""
    out = []
    kinds = ("cgroup", "cgroup2") if unified else ("cgroup",)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] in kinds and fields[4].startswith(CGROUP_V1 + "/"):
                out.append(fields[4])
    return sorted(set(out))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _mounts_under(root: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].replace("\\040", " ") for line in f]
    return sorted((p for p in points if _under(p, root)), key=len, reverse=True)


class RealNode:
    """containerd + kubelet for one lab node. `pki` is the lab control plane's (its CA signs the
    node's client certificate, user `system:node:<name>` in group `system:nodes`)."""

    def __init__(self, lab_name: str, name: str, netns_name: str, directory: str, node_ip: str,
                 api_server: str, pki: str, cni_conf_dir: str, cni_bin_dir: str, cluster_dns: str = "10.96.0.10") -> None:
        self.name, self.netns_name, self.node_ip = name, netns_name, node_ip
        self.api_server, self.pki, self.cni_conf_dir, self.cni_bin_dir = api_server, pki, cni_conf_dir, cni_bin_dir
        self.cluster_dns = cluster_dns
        self.paths = NodePaths(directory)
        self.cgroup_root = f"/pyproxy-{lab_name}-{name}"
        self.processes = ProcessTable(os.path.join(directory, "pids.json"))

    def log(self, name: str) -> str:
        return os.path.join(self.paths.root, f"{name}.log")

    # -- configuration -----------------------------------------------------------------------------

    def write_config(self) -> None:
        d = self.paths
        for sub in (d.cni_bin, d.net_d, d.containerd, d.kubelet, os.path.join(d.kubelet, "pki")):
            os.makedirs(sub, exist_ok=True)
        if not os.path.exists(PORTMAP):
            raise NodeError(f"{PORTMAP} is missing (apt-get install containernetworking-plugins)")
        for plugin, target in (("pyproxy-bridge", os.path.join(self.cni_bin_dir, "pyproxy-bridge")),
                               ("portmap", PORTMAP)):
            link = os.path.join(d.cni_bin, plugin)
            if not os.path.lexists(link):
                os.symlink(target, link)
        self._write_conflist()
        with open(os.path.join(d.containerd, "config.toml"), "w") as f:
            f.write(containerd_config(d, d.net_d))
        with open(os.path.join(d.kubelet, "resolv.conf"), "w") as f:
            f.write(f"nameserver {self.cluster_dns}\nsearch cluster.local\noptions ndots:5\n")
        self._client_certificate()
        ca = os.path.join(self.pki, "ca.crt")
        with open(os.path.join(d.kubelet, "kubelet.kubeconfig"), "w") as f:
            yaml.safe_dump(kubeconfig(self.api_server, ca, {
                "client-certificate": os.path.join(d.kubelet, "node.crt"),
                "client-key": os.path.join(d.kubelet, "node.key")}), f)
        with open(os.path.join(d.kubelet, "config.yaml"), "w") as f:
            yaml.safe_dump(kubelet_config(d, self.node_ip, self.cgroup_root, ca, self.cluster_dns), f)

    def _write_conflist(self) -> None:
        """The lab's pyproxy-bridge conflist, portmap chained after it: a pod's hostPort is the
        runtime's (CNI's) job, not the service proxy's; the kubelet hands containerd the ports."""
        with open(os.path.join(self.cni_conf_dir, "10-pyproxy.conflist")) as f:
            conflist = json.load(f)
        conflist["plugins"].append({"type": "portmap", "capabilities": {"portMappings": True}})
        with open(os.path.join(self.paths.net_d, "10-pyproxy.conflist"), "w") as f:
            json.dump(conflist, f, indent=2)

    def _client_certificate(self) -> None:
        out = self.paths.kubelet
        ext = os.path.join(out, "node.ext")
        with open(ext, "w") as f:
            f.write("extendedKeyUsage=clientAuth\n")
        key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
        _openssl("req", *key, "-keyout", "node.key", "-out", "node.csr",
                 "-subj", f"/O=system:nodes/CN=system:node:{self.name}", cwd=out)
        _openssl("x509", "-req", "-in", "node.csr", "-CA", os.path.join(self.pki, "ca.crt"),
                 "-CAkey", os.path.join(self.pki, "ca.key"), "-CAcreateserial", "-days", "30",
                 "-extfile", ext, "-out", "node.crt", cwd=out)

    def make_cgroups(self) -> None:
        for hierarchy in _cgroup_hierarchies():
            path = hierarchy + self.cgroup_root
            os.makedirs(path, exist_ok=True)
            if os.path.basename(hierarchy) == "cpuset":  # a new cpuset has no CPUs or memory nodes
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    with open(os.path.join(hierarchy, knob)) as src, open(os.path.join(path, knob), "w") as dst:
                        dst.write(src.read())

    # -- processes ---------------------------------------------------------------------------------

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([upstream.binary("ctr"), "--address", self.paths.socket, "-n", "k8s.io", *args],
                              capture_output=True, text=True)
        if check and proc.returncode:
            raise NodeError(f"ctr {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def crictl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run([upstream.binary("crictl"), "--runtime-endpoint", f"unix://{self.paths.socket}",
                               "--image-endpoint", f"unix://{self.paths.socket}", "--timeout", "30s", *args],
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode:
            raise NodeError(f"crictl {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def start_containerd(self, timeout: float = 30) -> None:
        d = self.paths
        argv = [upstream.binary("containerd"), "--config", os.path.join(d.containerd, "config.toml"),
                "--log-level", "info"]
        env = {"PATH": f"{upstream.cache_dir()}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        proc = start_process("containerd", argv, self.netns_name, self.log("containerd"), env=env)
        self.processes.add(proc)
        self._wait(lambda: os.path.exists(d.socket) and self.ctr("version", check=False).returncode == 0,
                   timeout, "containerd", proc)

    def import_images(self, archives: dict[str, str] | None = None) -> None:
        for name, archive in (archives or images.archives()).items():
            images.import_archive(upstream.binary("ctr"), self.paths.socket, archive,
                                  pin=name == images.PAUSE_IMAGE)

    def start_kubelet(self) -> None:
        d = self.paths
        argv = [upstream.binary("kubelet"), f"--config={os.path.join(d.kubelet, 'config.yaml')}",
                f"--kubeconfig={os.path.join(d.kubelet, 'kubelet.kubeconfig')}",
                f"--root-dir={os.path.join(d.kubelet, 'root')}", f"--cert-dir={os.path.join(d.kubelet, 'pki')}",
                f"--hostname-override={self.name}", f"--node-ip={self.node_ip}", "--v=2"]
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        self.processes.add(start_process("kubelet", argv, self.netns_name, self.log("kubelet"), env=env))

    def start(self, archives: dict[str, str] | None = None) -> "RealNode":
        upstream.ensure(*NODE_COMPONENTS)
        self.write_config()
        self.make_cgroups()
        self.start_containerd()
        self.import_images(archives)
        self.start_kubelet()
        return self

    def _wait(self, check, timeout: float, what: str, proc) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise NodeError(f"{what} {exit_status(proc.pid)}: see {self.log(what)}")
            if check():
                return
            time.sleep(0.1)
        raise NodeError(f"{what} not ready within {timeout:.0f}s: see {self.log(what)}")

    # -- stop ----------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Everything of this node, also after a crash (no live process needed)."""
        kubelet = self.processes.get("kubelet")
        if kubelet:
            self.processes.stop("kubelet")
        if os.path.exists(self.paths.socket):
            try:  # pods down through the CRI: runs CNI DEL and unmounts their netns and rootfs
                self.crictl("rmp", "--all", "--force", check=False, timeout=90)
            except subprocess.TimeoutExpired:
                pass
        self.processes.stop_all()
        self._kill_leftovers()
        for point in _mounts_under(self.paths.root):
            if subprocess.run(["umount", point], capture_output=True).returncode:
                subprocess.run(["umount", "-l", point], capture_output=True)
        self._remove_cgroups()
        self._remove_shared_leftovers()

    def _remove_shared_leftovers(self) -> None:
        """What the programs put outside the node directory: the kubelet's /var/log/containers
        links (a path it does not let us move) into our logs, and the shims' socket directory
        (/run/containerd/s, containerd's default state dir) once empty."""
        logs = "/var/log/containers"
        if os.path.isdir(logs):
            for entry in os.listdir(logs):
                path = os.path.join(logs, entry)
                if os.path.islink(path) and _under(os.readlink(path), self.paths.root):
                    os.unlink(path)
        for path in (logs, "/run/containerd/s", "/run/containerd"):
            try:
                os.rmdir(path)  # only when empty: another runtime's files are left alone
            except OSError:
                pass

    def _shim_pids(self) -> list[int]:
        """containerd-shim-runc-v2 processes of this node's containerd (their -address is its socket)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if args and args[0].endswith(b"containerd-shim-runc-v2") and self.paths.socket.encode() in args:
                pids.append(int(entry))
        return pids

    def _cgroup_pids(self) -> list[int]:
        pids: set[int] = set()
        for hierarchy in _cgroup_hierarchies(unified=True):
            for dirpath, _, files in os.walk(hierarchy + self.cgroup_root):
                if "cgroup.procs" in files:
                    try:
                        with open(os.path.join(dirpath, "cgroup.procs")) as f:
                            pids.update(int(p) for p in f.read().split())
                    except OSError:
                        pass
        return sorted(pids)

    def _kill_leftovers(self) -> None:
        for _ in range(50):
            pids = self._shim_pids() + self._cgroup_pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)

    def _remove_cgroups(self) -> None:
        for hierarchy in _cgroup_hierarchies(unified=True):
            top = hierarchy + self.cgroup_root
            if not os.path.isdir(top):
                continue
            for dirpath, _, _ in sorted(os.walk(top), key=lambda w: len(w[0]), reverse=True):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass

    def remove_files(self) -> None:
        shutil.rmtree(self.paths.root, ignore_errors=True)


# -- a lab's nodes ------------------------------------------------------------------------------


def lab_nodes(lab) -> list[RealNode]:
    """A RealNode per node of a lab with `controlPlane: kubernetes` (its files beside the lab's
    net.d/ and ipam/ of that node, in `<lab dir>/nodes/<node>/real`)."""
    from .lab import cni_bin_dir

    if lab.cp is None:
        raise NodeError("real nodes need a lab with controlPlane: kubernetes")
    out = []
    for n in lab.spec.nodes:
        base = os.path.join(lab.dir, "nodes", n.name)
        out.append(RealNode(lab.spec.name, n.name, lab.node_ns(n.name), os.path.join(base, "real"), str(n.ip),
                            lab.cp.server, lab.cp.pki, os.path.join(base, "net.d"), cni_bin_dir(),
                            str(lab.spec.service_cidr.network_address + 10)))
    return out


def start_lab_nodes(lab, timeout: float = 90) -> list[RealNode]:
    """containerd + kubelet on every lab node; returns when every kubelet reports Ready. The lab
    runs no node lifecycle controller, so the `not-ready` taint that admission put on the Nodes
    the lab registered is removed here once the kubelets say Ready (that controller's job)."""
    nodes = lab_nodes(lab)
    archives = images.archives()
    upstream.ensure(*NODE_COMPONENTS)
    try:
        for node in nodes:
            node.start(archives)
        deadline = time.monotonic() + timeout
        while not all(node_ready(lab.cp.api, n.name) for n in nodes):
            for n in nodes:
                kubelet = n.processes.get("kubelet")
                if kubelet is None or not kubelet.alive():
                    raise NodeError(f"kubelet of {n.name} exited: see {n.log('kubelet')}")
            if time.monotonic() > deadline:
                raise NodeError(f"nodes not Ready within {timeout:.0f}s: see {nodes[0].log('kubelet')}")
            time.sleep(0.2)
        for n in nodes:
            untaint(lab.cp.api, n.name)
    except BaseException:
        stop_lab_nodes(lab)
        raise
    return nodes


@contextlib.contextmanager
def two_node_cluster(name: str, services: bool = False, keep: bool = False, replace: bool = False):
    """A lab of two real nodes (node1, node2) on the real control plane, as (lab, nodes); with
    `services` also what upstream's e2e suite expects (start_cluster_services). Taken down on
    exit unless `keep`."""
    from .lab import Lab
    from .spec import parse_spec

    raw = {"name": name, "controlPlane": "kubernetes",
           "nodes": [{"name": "node1", "podCIDR": "10.244.1.0/24"}, {"name": "node2", "podCIDR": "10.244.2.0/24"}]}
    lab = Lab(parse_spec(raw))
    lab.up(raw, replace=replace)
    try:
        nodes = start_lab_nodes(lab)
        if services:
            start_cluster_services(lab)
        yield lab, nodes
    finally:
        if not keep:
            stop_lab_nodes(lab)
            lab.down()


def stop_lab_nodes(lab) -> None:
    """Stop every real node of the lab (also half-started or crashed ones); before `lab.down()`."""
    if lab.cp is None:
        return
    for node in lab_nodes(lab):
        node.stop()


def start_cluster_services(lab) -> None:
    """What upstream's e2e suite expects of a cluster beyond the lab's control plane, until
    controlplane.py runs it itself: the API server reaching kubelets by InternalIP; kube-scheduler; the root CA publisher (every namespace's
    kube-root-ca.crt, which each pod's service-account volume mounts), the pod GC and the DaemonSet
    controller in a second kube-controller-manager; CoreDNS (the lab's, in the control plane's namespace) behind a
    `kube-dns` Service at the kubelets' clusterDNS address, its EndpointSlice written by hand; and
    routes from the control plane's namespace to every pod CIDR (DNS answers and the API server's
    connections to pods go there)."""
    from . import proxies
    from .controlplane import start_process
    from .lab import ip_batch

    cp = lab.cp
    b = upstream.binary
    upstream.ensure("kube-scheduler", "kube-controller-manager", "coredns")
    # `kubectl exec/logs` go API server -> kubelet; by default it dials the Node's Hostname
    # address, which nothing here resolves
    flag = "--kubelet-preferred-address-types=InternalIP,Hostname"
    running = cp.processes.get("kube-apiserver")
    if running and flag not in running.argv:
        cp.restart_apiserver(cp.stop_apiserver() + [flag])
    lab.processes.add(start_process("kube-scheduler", [
        b("kube-scheduler"), f"--kubeconfig={cp.admin_kubeconfig}", "--leader-elect=false",
        "--bind-address=127.0.0.1", "--secure-port=10259", "--v=1"], cp.netns_name, cp.log("kube-scheduler")))
    lab.processes.add(start_process("kube-controller-manager-nodes", [
        b("kube-controller-manager"), f"--kubeconfig={cp.admin_kubeconfig}",
        "--controllers=root-ca-certificate-publisher-controller,pod-garbage-collector-controller,daemonset-controller",
        f"--root-ca-file={os.path.join(cp.pki, 'ca.crt')}", "--leader-elect=false", "--bind-address=127.0.0.1",
        "--secure-port=10258", "--v=1"], cp.netns_name, cp.log("kube-controller-manager-nodes")))
    ip_batch(cp.netns_name, [f"route add {n.pod_cidr} via {n.ip}" for n in lab.spec.nodes])
    proxies.start_coredns(lab, cp.netns_name)
    dns_ip = str(lab.spec.service_cidr.network_address + 10)
    ports = [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]
    cp.api.apply({"apiVersion": "v1", "kind": "Service",
                  "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
                  "spec": {"clusterIP": dns_ip, "ports": ports}})
    cp.api.apply({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                  "metadata": {"name": "kube-dns-lab", "namespace": "kube-system",
                               "labels": {"kubernetes.io/service-name": "kube-dns",
                                          "endpointslice.kubernetes.io/managed-by": "pyproxy-lab"}},
                  "endpoints": [{"addresses": [str(lab.spec.control_plane_ip)],
                                 "conditions": {"ready": True, "serving": True, "terminating": False}}],
                  "ports": ports})


def kubectl(lab, *args: str, stdin: str | None = None) -> str:
    """The lab's kubectl as admin, inside the control plane's namespace (`pyproxy lab kubectl`)."""
    from .. import netns

    with netns.entered(lab.cp.netns_name):  # the child inherits this thread's namespace
        proc = subprocess.run([upstream.binary("kubectl"), f"--kubeconfig={lab.cp.admin_kubeconfig}", *args],
                              input=stdin, capture_output=True, text=True, timeout=120)
    if proc.returncode:
        raise NodeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def apply_daemonset(lab, nodes: list[RealNode], archive: str, manifest: str, timeout: float = 180) -> float:
    """A node proxy the way a user installs it (pyproxy's daemonset.yaml, or the baseline's
    kube-proxy one): its image (`archive`, built from a Dockerfile) imported on every node, then
    `kubectl apply -f` with the two values a user sets (the pod CIDR, the API server's address);
    returns the seconds from the apply to the DaemonSet Ready on every node."""
    with open(manifest) as f:
        text = f.read()
    for old, new in (("clusterCIDR: 10.244.0.0/16", f"clusterCIDR: {lab.spec.cluster_cidr}"),
                     ("https://CONTROL_PLANE_ENDPOINT:6443", lab.cp.server)):
        if old not in text:
            raise NodeError(f"{manifest}: no {old!r} to set")
        text = text.replace(old, new)
    text = text.replace(":KUBE_VERSION", f":{upstream.K8S_VERSION}")
    name = next(o["metadata"]["name"] for o in yaml.safe_load_all(text) if o and o.get("kind") == "DaemonSet")
    for node in nodes:
        images.import_archive(upstream.binary("ctr"), node.paths.socket, archive)
    started = time.monotonic()
    kubectl(lab, "apply", "-f", "-", stdin=text)
    deadline = started + timeout
    while True:
        ds = lab.cp.api.get("DaemonSet", name, "kube-system")
        status = ds.get("status", {})
        if status.get("numberReady") == status.get("desiredNumberScheduled") == len(nodes):
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise NodeError(f"DaemonSet {name} not Ready on {len(nodes)} nodes within {timeout:.0f}s: {status}; "
                            f"see {nodes[0].log('kubelet')}")
        time.sleep(0.5)


def e2e_argv(lab, focus: str, skip: str = "", report_dir: str = "") -> list[str]:
    """upstream's e2e.test against the lab, to run inside the control plane's namespace
    (`nsenter --net=...`): the lab's kubectl (not one on PATH), no cloud provider."""
    argv = [upstream.binary("e2e.test"), f"--kubeconfig={lab.cp.admin_kubeconfig}",
            f"--kubectl-path={upstream.binary('kubectl')}", "--provider=skeleton", f"--ginkgo.focus={focus}",
            "--ginkgo.no-color", "--ginkgo.v"]
    return argv + ([f"--ginkgo.skip={skip}"] if skip else []) + ([f"--report-dir={report_dir}"] if report_dir else [])


def untaint(api, name: str, key: str = "node.kubernetes.io/not-ready") -> None:
    node = api.get("Node", name)
    taints = node.get("spec", {}).get("taints") or []
    kept = [t for t in taints if t.get("key") != key]
    if len(kept) != len(taints):
        api.request("PATCH", f"/api/v1/nodes/{name}", {"spec": {"taints": kept}},
                    content_type="application/merge-patch+json")


def node_ready(api, name: str) -> bool:
    """The kubelet says Ready (not the lab's stand-in condition)."""
    node = api.get("Node", name)
    for cond in node.get("status", {}).get("conditions", []):
        if cond.get("type") == "Ready":
            return cond.get("status") == "True" and cond.get("reason") == "KubeletReady" \
                and "pyproxy lab" not in cond.get("message", "")
    return False


def pod_manifest(name: str, node: str, image: str = images.AGNHOST_IMAGE, args: list[str] | None = None,
                 labels: dict[str, str] | None = None, port: int = 8080) -> dict:
    """A pod bound to `node` (no scheduler needed) running agnhost (netexec by default), Ready
    once it answers HTTP (the kubelet probes it from the node)."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": labels or {"app": name}},
            "spec": {"nodeName": node, "automountServiceAccountToken": False,
                     "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never",
                                     "args": args or ["netexec", f"--http-port={port}"],
                                     "ports": [{"containerPort": port}],
                                     "readinessProbe": {"httpGet": {"path": "/healthz", "port": port},
                                                        "periodSeconds": 1}}]}}





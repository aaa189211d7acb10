"""A real Kubernetes control plane for a lab: upstream's etcd, kube-apiserver and
kube-controller-manager (built by upstream.py), running in the lab's own `cp` namespace.

    pxl-<lab>-cp: etcd on 127.0.0.1:2379, kube-apiserver on <cp address>:6443,
                  kube-controller-manager (EndpointSlice, ServiceAccount, namespace, GC controllers)

Everything listens inside that namespace; the processes are started and stopped by PID (their
PIDs and command lines are kept in `<lab dir>/cp/pids.json`). Certificates are made with openssl:
a CA, the API server's serving certificate (the cp address, the `kubernetes` Service IP and
names), client certificates for the lab's admin (system:masters) and the controller manager,
and the service-account signing key. `admin.kubeconfig` is written for kubectl.

The node lifecycle controller is not run: the lab plays the kubelet (it writes pod status), and
there is no heartbeat for that controller to see, so it would mark every pod NotReady.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import yaml

from .. import netns
from . import upstream

API_PORT = 6443
ETCD_CLIENT = "http://127.0.0.1:2379"
# Controllers the lab needs; the rest (node lifecycle, scheduler-side ones) would fight the lab.
CONTROLLERS = "endpointslice-controller,endpointslice-mirroring-controller,endpoints-controller," \
              "serviceaccount-controller,namespace-controller,garbage-collector-controller," \
              "replicaset-controller,deployment-controller"


class ControlPlaneError(RuntimeError):
    pass


# kind -> (API path prefix, plural, namespaced): the kinds the lab and its tests write.
RESOURCES = {
    "Namespace": ("/api/v1", "namespaces", False),
    "Node": ("/api/v1", "nodes", False),
    "Pod": ("/api/v1", "pods", True),
    "Service": ("/api/v1", "services", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Event": ("/api/v1", "events", True),
    "EndpointSlice": ("/apis/discovery.k8s.io/v1", "endpointslices", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "DaemonSet": ("/apis/apps/v1", "daemonsets", True),
}


def resource_path(kind: str, namespace: str = "", name: str = "", sub: str = "") -> str:
    try:
        prefix, plural, namespaced = RESOURCES[kind]
    except KeyError:
        raise ControlPlaneError(f"the lab does not write {kind} objects") from None
    path = prefix + (f"/namespaces/{namespace or 'default'}" if namespaced else "") + f"/{plural}"
    return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


class ApiStatusError(ControlPlaneError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class KubeApi:
    """A small JSON client of the lab's API server with the admin's client certificate. The
    socket is made inside the control plane's namespace (the server listens nowhere else)."""

    def __init__(self, host: str, port: int, ca: str, cert: str, key: str, netns_name: str) -> None:
        self.host, self.port, self.netns_name = host, port, netns_name
        self.context = ssl.create_default_context(cafile=ca)
        self.context.load_cert_chain(cert, key)
        self._conn: http.client.HTTPSConnection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> http.client.HTTPSConnection:
        with netns.entered(self.netns_name):
            sock = socket.create_connection((self.host, self.port), timeout=30)
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=30)
        conn.sock = self.context.wrap_socket(sock, server_hostname=self.host)
        return conn

    def request(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None,
                content_type: str = "application/json") -> dict:
        if params:
            path += "?" + urllib.parse.urlencode(params)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json", **({"Content-Type": content_type} if data else {})}
        with self._lock:
            for attempt in (1, 2):  # a kept-alive connection the server closed: once more, fresh
                try:
                    if self._conn is None:
                        self._conn = self._connect()
                    self._conn.request(method, path, body=data, headers=headers)
                    resp = self._conn.getresponse()
                    raw = resp.read()
                    break
                except (OSError, http.client.HTTPException):
                    if self._conn:
                        self._conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise
        try:
            out = json.loads(raw) if raw else {}
        except ValueError:  # /readyz and friends answer text
            out = {"text": raw.decode(errors="replace")}
        if resp.status >= 400:
            raise ApiStatusError(resp.status, out.get("message") or out.get("text", "")[:200])
        return out

    def close(self) -> None:
        with self._lock:
            if self._conn:
                self._conn.close()
                self._conn = None

    # -- objects ------------------------------------------------------------------------------------

    def apply(self, obj: dict) -> dict:
        """Server-side apply: create or update, as `kubectl apply --server-side --force-conflicts`."""
        meta = obj["metadata"]
        path = resource_path(obj["kind"], meta.get("namespace", ""), meta["name"])
        return self.request("PATCH", path, obj, {"fieldManager": "pyproxy-lab", "force": "true"},
                            "application/apply-patch+yaml")

    def get(self, kind: str, name: str, namespace: str = "") -> dict:
        return self.request("GET", resource_path(kind, namespace, name))

    def list(self, kind: str, namespace: str = "", **params: Any) -> list[dict]:
        prefix, plural, namespaced = RESOURCES[kind]
        path = resource_path(kind, namespace) if namespace or not namespaced else f"{prefix}/{plural}"
        return self.request("GET", path, params=params or None).get("items", [])

    def delete(self, kind: str, name: str, namespace: str = "", grace: int | None = None) -> None:
        params = {"gracePeriodSeconds": grace} if grace is not None else None
        try:
            self.request("DELETE", resource_path(kind, namespace, name), params=params)
        except ApiStatusError as err:
            if err.status != 404:
                raise

    def patch_status(self, kind: str, name: str, status: dict, namespace: str = "") -> dict:
        return self.request("PATCH", resource_path(kind, namespace, name, "status"), {"status": status},
                            content_type="application/merge-patch+json")

    def token(self, service_account: str, namespace: str, seconds: int = 86400) -> str:
        """A bound token for a ServiceAccount (what a projected token volume holds)."""
        out = self.request("POST", resource_path("ServiceAccount", namespace, service_account, "token"),
                           {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                            "spec": {"expirationSeconds": seconds}})
        return out["status"]["token"]


# -- certificates ---------------------------------------------------------------------------------


def _openssl(*args: str, cwd: str) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise ControlPlaneError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def make_pki(directory: str, address: str, service_ip: str) -> None:
    """A CA, the API server's serving certificate, two client certificates, the SA key pair."""
    os.makedirs(directory, exist_ok=True)
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "30",
             "-subj", "/CN=pyproxy-lab-ca", cwd=directory)
    names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
             "localhost"]
    sans = ",".join([f"IP:{address}", f"IP:{service_ip}", "IP:127.0.0.1", *(f"DNS:{n}" for n in names)])
    for name, subject, ext in (
        ("apiserver", "/CN=kube-apiserver", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth"),
        ("admin", "/O=system:masters/CN=pyproxy-lab-admin", "extendedKeyUsage=clientAuth"),
        ("controller-manager", "/CN=system:kube-controller-manager", "extendedKeyUsage=clientAuth"),
    ):
        with open(os.path.join(directory, f"{name}.ext"), "w") as f:
            f.write(ext + "\n")
        _openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "30", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=directory)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=directory)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)


def kubeconfig(server: str, ca: str, user: dict[str, str]) -> dict:
    with open(ca, "rb") as f:
        ca_data = base64.b64encode(f.read()).decode()
    return {"apiVersion": "v1", "kind": "Config", "current-context": "lab",
            "clusters": [{"name": "lab", "cluster": {"server": server, "certificate-authority-data": ca_data}}],
            "users": [{"name": "lab", "user": user}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}]}


def write_yaml(path: str, obj: Any) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(obj, f)
    os.chmod(path, 0o600)
    return path


# -- processes -------------------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    pid: int
    argv: list[str]
    netns: str = ""

    def alive(self) -> bool:
        """Still our process (the PID was not reused by another program)."""
        child = _children.get(self.pid)
        if child is not None:  # started by this process: its Popen knows (no /proc race at exec)
            return child.poll() is None
        return runs(self.pid, self.argv)

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            _reap(self.pid)
            return
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            _reap(self.pid)
            time.sleep(0.05)
        if self.alive():
            self._signal(signal.SIGKILL)
        _reap(self.pid)
        self._signal(signal.SIGKILL, group_only=True)  # what it started (kube-proxy's iptables-restore)

    def _signal(self, sig: int, group_only: bool = False) -> None:
        """The process and its children: it leads a process group of its own (started with
        start_new_session), so the group is exactly what we started."""
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            if not group_only:
                try:
                    os.kill(self.pid, sig)
                except ProcessLookupError:
                    pass


def exited(pid: int) -> bool:
    """The process is gone, or a zombie (exited, not yet reaped by its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def runs(pid: int, argv: list[str]) -> bool:
    """The process is alive and runs this command line (its PID was not reused). A script started
    through its #! line shows its interpreter first (`python .../bin/pyproxy run ...`)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    if exited(pid):
        return False
    wanted = [a.encode() for a in argv]
    return args[: len(wanted)] == wanted or args[1: 1 + len(wanted)] == wanted


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None:
        child.poll()
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# Popen objects of the programs this process started: their exit status, for error messages.
_children: dict[int, subprocess.Popen] = {}


def exit_status(pid: int) -> str:
    child = _children.get(pid)
    code = child.poll() if child is not None else None
    if code is None:
        return "exited"
    return f"exited with status {code}" if code >= 0 else f"killed by signal {-code}"


def start_process(name: str, argv: list[str], netns_name: str, log_path: str,
                  env: dict[str, str] | None = None) -> Process:
    """Start a program inside a lab namespace (the child inherits this thread's namespace)."""
    with open(log_path, "ab") as log, netns.entered(netns_name):
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                env=env)
    _children[proc.pid] = proc
    return Process(name, proc.pid, argv, netns_name)


class ProcessTable:
    """The PIDs a lab started, on disk, so `lab down` from another process can stop them."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> list[Process]:
        try:
            with open(self.path) as f:
                return [Process(**p) for p in json.load(f)]
        except (OSError, ValueError, TypeError):
            return []

    def add(self, proc: Process) -> None:
        procs = [p for p in self.load() if p.name != proc.name] + [proc]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump([p.__dict__ for p in procs], f)
        os.replace(tmp, self.path)

    def get(self, name: str) -> Process | None:
        return next((p for p in self.load() if p.name == name), None)

    def stop(self, name: str) -> None:
        proc = self.get(name)
        if proc:
            proc.stop()
            remaining = [p for p in self.load() if p.name != name]
            with open(self.path, "w") as f:
                json.dump([p.__dict__ for p in remaining], f)

    def stop_all(self) -> None:
        for proc in reversed(self.load()):  # the last started first: controllers before the API server
            proc.stop()
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


# -- the control plane ------------------------------------------------------------------------------


class ControlPlane:
    def __init__(self, directory: str, netns_name: str, address: str, service_cidrs: list[str],
                 cluster_cidr: str) -> None:
        self.dir = directory
        self.netns_name = netns_name
        self.address = address
        self.service_cidrs = service_cidrs
        self.cluster_cidr = cluster_cidr
        self.pki = os.path.join(directory, "pki")
        self.processes = ProcessTable(os.path.join(directory, "pids.json"))
        self._api: KubeApi | None = None

    @property
    def server(self) -> str:
        return f"https://{self.address}:{API_PORT}"

    @property
    def admin_kubeconfig(self) -> str:
        return os.path.join(self.dir, "admin.kubeconfig")

    @property
    def service_ip(self) -> str:
        """The `kubernetes` Service's cluster IP: the first address of the first service range."""
        return str(ipaddress.ip_network(self.service_cidrs[0]).network_address + 1)

    @property
    def api_credentials(self) -> tuple[str, str, str]:
        """(CA, client certificate, key) of the lab's admin."""
        return tuple(os.path.join(self.pki, name) for name in ("ca.crt", "admin.crt", "admin.key"))

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            self._api = KubeApi(self.address, API_PORT, *self.api_credentials, self.netns_name)
        return self._api

    def log(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}.log")

    def start(self, timeout: float = 120.0) -> "ControlPlane":
        bin_dir = upstream.ensure(*upstream.CONTROL_PLANE)
        os.makedirs(self.dir, exist_ok=True)
        make_pki(self.pki, self.address, self.service_ip)
        p = lambda name: os.path.join(self.pki, name)  # noqa: E731
        write_yaml(self.admin_kubeconfig, kubeconfig(self.server, p("ca.crt"), {
            "client-certificate": p("admin.crt"), "client-key": p("admin.key")}))
        kcm_config = write_yaml(os.path.join(self.dir, "controller-manager.kubeconfig"), kubeconfig(
            self.server, p("ca.crt"), {"client-certificate": p("controller-manager.crt"),
                                       "client-key": p("controller-manager.key")}))
        b = lambda name: os.path.join(bin_dir, name)  # noqa: E731
        self.processes.add(start_process("etcd", [
            b("etcd"), "--name", "lab", "--data-dir", os.path.join(self.dir, "etcd"),
            "--listen-client-urls", ETCD_CLIENT, "--advertise-client-urls", ETCD_CLIENT,
            "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
            "--initial-cluster", "lab=http://127.0.0.1:2380", "--listen-metrics-urls", "http://127.0.0.1:2381",
            "--unsafe-no-fsync", "--log-level", "warn",
        ], self.netns_name, self.log("etcd")))
        self.processes.add(start_process("kube-apiserver", [
            b("kube-apiserver"), f"--etcd-servers={ETCD_CLIENT}", "--bind-address=0.0.0.0",
            f"--advertise-address={self.address}", f"--secure-port={API_PORT}",
            f"--tls-cert-file={p('apiserver.crt')}", f"--tls-private-key-file={p('apiserver.key')}",
            f"--client-ca-file={p('ca.crt')}", "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p('sa.pub')}", f"--service-account-signing-key-file={p('sa.key')}",
            f"--service-cluster-ip-range={','.join(self.service_cidrs)}", "--allow-privileged=true",
            f"--cert-dir={os.path.join(self.dir, 'apiserver-certs')}", "--profiling=false", "--v=1",
        ], self.netns_name, self.log("kube-apiserver")))
        self.wait_ready(timeout)
        self.processes.add(start_process("kube-controller-manager", [
            b("kube-controller-manager"), f"--kubeconfig={kcm_config}", f"--controllers={CONTROLLERS}",
            f"--service-account-private-key-file={p('sa.key')}", f"--root-ca-file={p('ca.crt')}",
            "--use-service-account-credentials=true", "--leader-elect=false", "--bind-address=127.0.0.1",
            "--secure-port=10257", "--profiling=false",
            "--concurrent-service-endpoint-syncs=10", "--endpointslice-updates-batch-period=0s", "--v=1",
        ], self.netns_name, self.log("kube-controller-manager")))
        self.wait_for(lambda: self.api.list("ServiceAccount", "default"), timeout, "the default ServiceAccount")
        return self

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            apiserver = self.processes.get("kube-apiserver")
            if apiserver is None or not apiserver.alive():
                status = exit_status(apiserver.pid) if apiserver else "exited"
                raise ControlPlaneError(f"kube-apiserver {status}: see {self.log('kube-apiserver')}")
            return self.api.request("GET", "/readyz").get("text") == "ok"
        self.wait_for(ready, timeout, "kube-apiserver /readyz")

    def wait_for(self, check, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except (OSError, ControlPlaneError, ValueError, http.client.HTTPException) as err:
                if isinstance(err, ControlPlaneError) and "kube-apiserver" in str(err):
                    raise
                last = err
            time.sleep(0.2)
        raise ControlPlaneError(f"{what} not ready within {timeout:.0f}s ({last}); logs in {self.dir}")

    def stop_apiserver(self) -> list[str]:
        """Stop kube-apiserver (for outage tests); returns its command line for restart_apiserver."""
        proc = self.processes.get("kube-apiserver")
        self.processes.stop("kube-apiserver")
        self.api.close()
        return proc.argv if proc else []

    def restart_apiserver(self, argv: list[str]) -> None:
        self.processes.add(start_process("kube-apiserver", argv, self.netns_name, self.log("kube-apiserver")))
        self.wait_ready(120)

    def stop(self) -> None:
        if self._api:
            self._api.close()
        self.processes.stop_all()

    # -- helpers for tests and the lab -------------------------------------------------------------

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """kubectl as the lab's admin, run inside the control plane's namespace."""
        argv = ["nsenter", f"--net={netns.netns_path(self.netns_name)}", upstream.binary("kubectl"),
                f"--kubeconfig={self.admin_kubeconfig}", *args]
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
        if check and proc.returncode:
            raise ControlPlaneError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def etcd_compact(self) -> int:
        """Compact etcd at its current revision (watches from before it then get 410 Gone), through
        etcd's JSON gateway. Returns the revision."""
        def post(path: str, body: dict) -> dict:
            with netns.entered(self.netns_name):
                conn = http.client.HTTPConnection("127.0.0.1", 2379, timeout=10)
                conn.connect()
            try:
                conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
                return json.loads(conn.getresponse().read())
            finally:
                conn.close()
        revision = int(post("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])
        post("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

"""Service proxies on the nodes of a real-control-plane lab, deployed as a user would: pyproxy
with the ServiceAccount, ClusterRole and ConfigMap of `daemonset.yaml` (its bound token, not an
admin credential; its config read back from the ConfigMap object), and upstream's kube-proxy with
a config of its own, each started inside a node's namespace and stopped by PID with the lab."""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

import yaml

from . import upstream
from .controlplane import Process, kubeconfig, start_process, write_yaml
from .lab import Lab, LabError

DAEMONSET = os.path.join(os.path.dirname(__file__), "..", "..", "daemonset.yaml")
SYSTEM_NS = "kube-system"


def daemonset_objects(path: str = DAEMONSET) -> list[dict[str, Any]]:
    try:
        with open(path) as f:
            return [d for d in yaml.safe_load_all(f) if d]
    except OSError as err:
        raise LabError(f"daemonset.yaml not found next to the package ({err.strerror}): run from a checkout") from None


def _proxy_dir(lab: Lab) -> str:
    path = os.path.join(lab.dir, "proxies")
    os.makedirs(path, exist_ok=True)
    return path


def deploy_pyproxy(lab: Lab, config_changes: dict[str, Any] | None = None) -> tuple[str, str]:
    """Apply daemonset.yaml's ServiceAccount, RBAC and ConfigMap (clusterCIDR set to the lab's,
    plus `config_changes`); return (kubeconfig with the SA's bound token, config from the API)."""
    cp = _cp(lab)
    for obj in daemonset_objects():
        if obj["kind"] == "ConfigMap":
            config = yaml.safe_load(obj["data"]["config.conf"])
            config.update({"clusterCIDR": str(lab.spec.cluster_cidr), **(config_changes or {})})
            obj = {**obj, "data": {"config.conf": yaml.safe_dump(config)}}
        if obj["kind"] != "DaemonSet":  # no kubelet runs it here: the lab starts the program itself
            cp.api.apply(obj)
    directory = _proxy_dir(lab)
    token = cp.api.token("pyproxy", SYSTEM_NS)
    kube = write_yaml(os.path.join(directory, "pyproxy.kubeconfig"),
                      kubeconfig(cp.server, os.path.join(cp.pki, "ca.crt"), {"token": token}))
    config_map = cp.api.get("ConfigMap", "pyproxy", SYSTEM_NS)
    config_path = os.path.join(directory, "pyproxy-config.conf")
    with open(config_path, "w") as f:
        f.write(config_map["data"]["config.conf"])
    return kube, config_path


def start_pyproxy(lab: Lab, node: str, kube: str, config: str, *extra: str, netns_name: str = "") -> Process:
    pyproxy = os.path.join(os.path.dirname(sys.executable), "pyproxy")
    name = f"pyproxy-{node}" + (f"@{netns_name}" if netns_name else "")
    proc = start_process(name, [pyproxy, "run", "--kubeconfig", kube, "--config", config, "--node", node, *extra],
                         netns_name or lab.node_ns(node), os.path.join(_proxy_dir(lab), f"{name}.log"))
    lab.processes.add(proc)
    return proc


def kube_proxy_config(lab: Lab, mode: str = "iptables", **fields: Any) -> dict[str, Any]:
    return {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", "mode": mode,
            "clusterCIDR": str(lab.spec.cluster_cidr), "detectLocalMode": "ClusterCIDR",
            "iptables": {"masqueradeBit": 14, "minSyncPeriod": "1s", "syncPeriod": "30s"},
            "nftables": {"masqueradeBit": 14, "minSyncPeriod": "1s", "syncPeriod": "30s"},
            "conntrack": {"maxPerCore": 0}, "healthzBindAddress": "0.0.0.0:10256",
            "metricsBindAddress": "127.0.0.1:10249", **fields}


def iptables_bin_dir(lab: Lab, variant: str) -> str:
    """A folder where `iptables`, `iptables-save`, ... are the given variant's (legacy or nft):
    put first on kube-proxy's PATH, it picks the variant as a node's alternatives would."""
    directory = os.path.join(_proxy_dir(lab), f"iptables-{variant}")
    os.makedirs(directory, exist_ok=True)
    for tool in ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"):
        link = os.path.join(directory, tool)
        if not os.path.lexists(link):
            base, _, suffix = tool.partition("-")
            os.symlink(shutil.which(f"{base}-{variant}" + (f"-{suffix}" if suffix else "")) or "/bin/false", link)
    return directory


def start_kube_proxy(lab: Lab, node: str, netns_name: str, mode: str = "iptables", variant: str = "legacy",
                     **fields: Any) -> Process:
    """Upstream kube-proxy for `node`, in `netns_name` (a node's namespace, or one of its own
    for side-by-side runs), with a kube-proxy ServiceAccount bound to system:node-proxier, as
    kubeadm deploys it."""
    bin_dir = upstream.ensure("kube-proxy")
    directory = _proxy_dir(lab)
    kube = _service_account_kubeconfig(lab, "kube-proxy", "system:node-proxier")
    name = f"kube-proxy-{node}@{netns_name}"
    config = kube_proxy_config(lab, mode, **fields)
    config["clientConnection"] = {"kubeconfig": kube}
    config_path = write_yaml(os.path.join(directory, f"{name}.yaml"), config)
    env = {**os.environ, "PATH": f"{iptables_bin_dir(lab, variant)}:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}"}
    proc = start_process(name, [os.path.join(bin_dir, "kube-proxy"), f"--config={config_path}",
                                f"--hostname-override={node}", "--v=2"],
                         netns_name, os.path.join(directory, f"{name}.log"), env=env)
    lab.processes.add(proc)
    return proc


def _service_account_kubeconfig(lab: Lab, name: str, cluster_role: str) -> str:
    """A kube-system ServiceAccount bound to `cluster_role`, and a kubeconfig with its token."""
    cp = _cp(lab)
    cp.api.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": SYSTEM_NS}})
    cp.api.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                  "metadata": {"name": f"lab-{name}"},
                  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
                  "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": SYSTEM_NS}]})
    return write_yaml(os.path.join(_proxy_dir(lab), f"{name}.kubeconfig"),
                      kubeconfig(cp.server, os.path.join(cp.pki, "ca.crt"), {"token": cp.api.token(name, SYSTEM_NS)}))


def _cp(lab: Lab):
    if lab.cp is None:
        raise LabError("this needs a lab with controlPlane: kubernetes")
    return lab.cp


def start_coredns(lab: Lab, netns_name: str, port: int = 53, zone: str = "cluster.local", ttl: int = 5) -> Process:
    """Upstream CoreDNS with its `kubernetes` plugin against the lab's API server, as a cluster's
    kube-dns would run it (a ServiceAccount with CoreDNS's own ClusterRole)."""
    cp = _cp(lab)
    bin_dir = upstream.ensure("coredns")
    directory = _proxy_dir(lab)
    cp.api.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "lab-coredns"},
                  "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                             "verbs": ["list", "watch"]},
                            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]})
    kube = _service_account_kubeconfig(lab, "coredns", "lab-coredns")
    corefile = os.path.join(directory, "Corefile")
    with open(corefile, "w") as f:
        f.write(f".:{port} {{\n    errors\n    kubernetes {zone} in-addr.arpa ip6.arpa {{\n"
                f"        kubeconfig {kube}\n        pods insecure\n        fallthrough in-addr.arpa ip6.arpa\n"
                f"        ttl {ttl}\n    }}\n    ready 127.0.0.1:8181\n}}\n")
    proc = start_process("coredns", [os.path.join(bin_dir, "coredns"), "-conf", corefile], netns_name,
                         os.path.join(directory, "coredns.log"))
    lab.processes.add(proc)
    return proc


def start_pyproxy_dns(lab: Lab, netns_name: str, kube: str, port: int = 53, zone: str = "cluster.local",
                      ttl: int = 5) -> Process:
    """`pyproxy dns serve` against the lab's API server, with pyproxy's ServiceAccount token."""
    pyproxy = os.path.join(os.path.dirname(sys.executable), "pyproxy")
    proc = start_process("pyproxy-dns", [pyproxy, "dns", "serve", "--kubeconfig", kube, "--listen", f"0.0.0.0:{port}",
                                         "--zone", zone, "--ttl", str(ttl)],
                         netns_name, os.path.join(_proxy_dir(lab), "pyproxy-dns.log"))
    lab.processes.add(proc)
    return proc

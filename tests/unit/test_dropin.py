"""pyproxy as a drop-in for kube-proxy: the ConfigMaps kubeadm and kind write load unchanged and
mean what they mean to kube-proxy, and kube-proxy's command line is taken as it is."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from pyproxy.config import ConfigError, parse_config
from pyproxy.nodesetup import conntrack_settings

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
PYPROXY = os.path.join(os.path.dirname(sys.executable), "pyproxy")


def configmap(name: str) -> dict:
    with open(os.path.join(GOLDEN, name)) as f:
        return yaml.safe_load(yaml.safe_load(f)["data"]["config.conf"])


def test_kubeadm_configmap_loads_with_kube_proxy_defaults():
    config = parse_config(configmap("kubeadm-kube-proxy.yaml"))
    assert config.warnings == (), "a zero field is not a setting: nothing to warn about"
    assert (config.mode, config.detect_local_mode, [str(c) for c in config.cluster_cidrs]) == \
        ("iptables", "ClusterCIDR", ["10.244.0.0/16"])
    assert (config.masquerade_bit, config.localhost_node_ports, config.masquerade_all) == (14, True, False)
    assert (config.min_sync_period, config.sync_period) == (1.0, 30.0)
    assert (config.healthz_bind_address, config.metrics_bind_address) == ("0.0.0.0:10256", "127.0.0.1:10249")
    assert (config.conntrack_max_per_core, config.conntrack_min) == (32768, 131072)
    assert (config.conntrack_tcp_established_timeout, config.conntrack_tcp_close_wait_timeout) == (86400, 3600)
    assert (config.oom_score_adj, config.kubeconfig) == (-999, "/var/lib/kube-proxy/kubeconfig.conf")
    assert conntrack_settings(config, cpus=2) == {
        "net/netfilter/nf_conntrack_max": "131072",
        "net/netfilter/nf_conntrack_tcp_timeout_established": "86400",
        "net/netfilter/nf_conntrack_tcp_timeout_close_wait": "3600"}


def test_kind_configmap_keeps_its_choices():
    config = parse_config(configmap("kind-kube-proxy.yaml"))
    assert config.warnings == ()
    assert (config.mode, config.min_sync_period, config.sync_period, config.conntrack_max_per_core) == \
        ("iptables", 1.0, 30.0, 0)
    assert "net/netfilter/nf_conntrack_max" not in conntrack_settings(config), "maxPerCore 0: leave nf_conntrack_max"


def test_nftables_mode_reads_its_own_section():
    config = parse_config({"mode": "nftables", "iptables": {"masqueradeBit": 3, "syncPeriod": "10s"},
                           "nftables": {"masqueradeBit": 5, "minSyncPeriod": "250ms", "masqueradeAll": True}})
    assert (config.masquerade_bit, config.min_sync_period, config.sync_period, config.masquerade_all) == \
        (5, 0.25, 30.0, True)


@pytest.mark.parametrize("address, effective", [("0.0.0.0", "0.0.0.0:10256"), ("10.0.0.1:8080", "10.0.0.1:8080"),
                                                ("::", "[::]:10256"), ("", "0.0.0.0:10256")])
def test_bind_addresses_as_kube_proxy_defaults_them(address, effective):
    assert parse_config({"healthzBindAddress": address}).healthz_bind_address == effective


@pytest.mark.parametrize("raw, message", [
    ({"healthzBindAddress": "abc"}, "healthzBindAddress: expected host:port"),
    ({"healthzBindAddress": ":99999"}, "healthzBindAddress: expected host:port with a port 0-65535"),
    ({"metricsBindAddress": ":"}, "metricsBindAddress: expected host:port"),
    ({"iptables": {"syncPeriod": "1e20"}}, "iptables.syncPeriod: invalid duration"),
    ({"iptables": {"syncPeriod": float("inf")}}, "iptables.syncPeriod: invalid duration"),
    ({"iptables": {"minSyncPeriod": -1}}, "iptables.minSyncPeriod: invalid duration"),
    ({"iptables": {"syncPeriod": float("nan")}}, "iptables.syncPeriod: invalid duration"),
    ({"nodePortAddresses": [5]}, "nodePortAddresses[0]: expected a CIDR or primary"),
    ({"detectLocal": {"bridgeInterface": 5}}, "detectLocal.bridgeInterface: expected a string"),
    ({"ipvs": {"excludeCIDRs": "10.0.0.0/8"}}, "ipvs.excludeCIDRs: expected a list"),
    ({"oomScoreAdj": 5000}, "oomScoreAdj: must be -1000 to 1000"),
])
def test_bad_values_name_the_field(raw, message):
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert message in str(err.value)


def test_set_fields_that_pyproxy_does_not_apply_are_named_once():
    config = parse_config({"configSyncPeriod": "15m", "clientConnection": {"qps": 50},
                           "featureGates": {"SomeGate": True, "ServiceTrafficDistribution": True}})
    assert config.warnings == ("configSyncPeriod: not applied (pyproxy watches without resync)",
                               "clientConnection.qps: not applied (pyproxy asks for JSON and does not rate-limit "
                               "its watches)",
                               "featureGates.SomeGate: not a gate that changes pyproxy, ignored")


def test_kube_proxy_command_line_from_the_kubeadm_daemonset(tmp_path):
    """kubeadm's DaemonSet runs `kube-proxy --config=... --hostname-override=$(NODE_NAME)`, with
    --v=2 often added: the same argv works for pyproxy (and under the name kube-proxy)."""
    with open(os.path.join(GOLDEN, "kubeadm-kube-proxy.yaml")) as f:
        conf = yaml.safe_load(f)["data"]["config.conf"]
    path = tmp_path / "config.conf"
    path.write_text(conf)
    out = tmp_path / "effective.yaml"
    link = tmp_path / "kube-proxy"
    link.symlink_to(PYPROXY)
    proc = subprocess.run([str(link), f"--config={path}", "--hostname-override=Node-7", "--v=2",
                           "--proxy-mode=nftables", f"--write-config-to={out}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    effective = yaml.safe_load(out.read_text())
    assert (effective["hostnameOverride"], effective["mode"], effective["nftables"]["masqueradeBit"]) == \
        ("node-7", "nftables", 14)
    assert effective["healthzBindAddress"] == "0.0.0.0:10256"
    assert effective["nodePortAddresses"] == ["primary"], "kube-proxy's nftables default, after --proxy-mode"
    version = subprocess.run([PYPROXY, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("pyproxy ")
    unknown = subprocess.run([PYPROXY, "run", "--masquerade-bitz=3"], capture_output=True, text=True)
    assert (unknown.returncode, unknown.stderr) == (1, "Error: unknown flag: --masquerade-bitz\n"), "kube-proxy's words"


def node_port_cluster(tmp_path, *addresses: tuple[str, str]):
    """A manifests file: Node n1 with these (type, address) pairs, and a NodePort service."""
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
         "status": {"addresses": [{"type": kind, "address": ip} for kind, ip in addresses]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "ns", "name": "web"},
         "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [{"port": 80, "nodePort": 30080}]}}]))
    return path


def test_node_port_addresses_default_to_primary_only_in_nftables_mode(tmp_path):
    """kube-proxy's platformApplyDefaults: an unset nodePortAddresses means `primary` in nftables
    mode (decided once the mode is final, --proxy-mode included), every address otherwise."""
    manifests = node_port_cluster(tmp_path, ("InternalIP", "172.18.0.11"), ("ExternalIP", "192.0.2.1"))

    def dumped(mode):
        out = subprocess.run([PYPROXY, "dump", "-f", str(manifests), "--node", "n1", "--backend", mode],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout
    assert "set nodeport-ips { type ipv4_addr; elements = { 172.18.0.11 }; }" in dumped("nftables")
    assert "-m addrtype --dst-type LOCAL" in dumped("iptables")


@pytest.mark.skipif(os.geteuid() != 0, reason="remounting /sys in a mount namespace needs root")
def test_a_read_only_sys_is_seen_as_kube_proxy_sees_it():
    """kube-proxy's readOnlySysFS check, on a real read-only /sys (a private mount namespace)."""
    probe = ("from pyproxy.config import ProxyConfig; from pyproxy.nodesetup import conntrack_limits_blocked as b; "
             "print(b(ProxyConfig()), b(ProxyConfig(conntrack_max_per_core=0)))")
    def in_mount_namespace(setup: str) -> list[str]:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               f'{setup} && exec "{sys.executable}" -c "{probe}"'],
                              capture_output=True, text=True, check=True).stdout.split()
    assert in_mount_namespace("mount -o remount,bind,ro /sys") == ["True", "False"], \
        "read-only /sys: the limits are blocked unless maxPerCore is 0"
    assert in_mount_namespace("mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys") == \
        ["True", "False"], "a read-only /proc/sys (a container's) blocks them too"
    rw = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert rw == ["False", "False"]


@pytest.mark.parametrize("addresses, pod_cidr, families", [
    ((), None, (4,)),                               # no Node yet: IPv4, as kube-proxy's default
    (("10.0.0.1",), "10.244.1.0/24", (4,)),          # single stack: no IPv6 rules at all
    (("fd00::1",), "fd00:244::/64", (6,)),           # IPv6-only node
])
def test_families_follow_the_node(addresses, pod_cidr, families):
    """`pyproxy run` without --family (daemonset.yaml's way) serves the families the Node has;
    the dual-stack case (which probes the kernel) runs against kube-proxy in tests/k8s."""
    from pyproxy.config import ProxyConfig
    from pyproxy.model.cluster import Cluster
    from pyproxy.model.parse import parse_object
    from pyproxy.proxier import Proxier
    from tests.factories import node

    cluster = Cluster()
    if addresses:
        cluster.add(parse_object(node("n1", *addresses, pod_cidr=pod_cidr)))
    assert Proxier("n1", ProxyConfig(), families=None).auto_families(cluster) == families


def test_bind_address_is_the_primary_node_ip(tmp_path):
    """kube-proxy's bindAddress: a specific address is the node's primary IP, so `primary`
    nodePortAddresses mean it (and not the Node's first address)."""
    manifests = node_port_cluster(tmp_path, ("InternalIP", "172.18.0.11"), ("InternalIP", "172.18.0.12"))
    config = tmp_path / "config.yaml"
    config.write_text("mode: nftables\nbindAddress: 172.18.0.12\n")
    out = subprocess.run([PYPROXY, "dump", "-f", str(manifests), "--node", "n1", "--config", str(config)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "set nodeport-ips { type ipv4_addr; elements = { 172.18.0.12 }; }" in out.stdout
    assert parse_config({"bindAddress": "0.0.0.0"}).bind_address == "", "the unspecified address is no override"
    with pytest.raises(ConfigError, match="bindAddress"):
        parse_config({"bindAddress": "node-1"})


def test_json_logging_as_kube_proxy_writes_it(tmp_path):
    """logging.format json (or --logging-format=json, which wins over the file as kube-proxy's
    logging flags do): one compact JSON object per line, ts in milliseconds, caller, msg, v."""
    import json

    from pyproxy import netns

    config = tmp_path / "config.yaml"
    config.write_text("logging: {format: text}\n")
    empty = tmp_path / "cluster.yaml"
    empty.write_text("apiVersion: v1\nkind: List\nitems: []\n")
    with netns.scratch():  # one real sync, in a namespace of its own
        proc = subprocess.run([PYPROXY, "run", f"--config={config}", "--logging-format=json", "--once", "-f", str(empty),
                               "--iptables-variant", "legacy"], capture_output=True, text=True, timeout=30)
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert lines and all(set(line) in ({"ts", "caller", "msg", "v"}, {"ts", "caller", "msg", "err"}) for line in lines)
    assert lines[0]["ts"] > 1e12 and ".py:" in lines[0]["caller"], lines[0]
    assert "ignored" not in proc.stderr, "a logging flag is not overridden by --config"

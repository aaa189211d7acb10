"""kube-proxy's behaviour at start and while running, on a node (a namespace made here): the
node setup kube-proxy does (conntrack sysctls, --init-only), the metrics address's other paths,
and exiting when the configuration file changes."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time

import yaml

from pyproxy import netns

PYPROXY = os.path.join(os.path.dirname(sys.executable), "pyproxy")
MANIFEST = {"apiVersion": "v1", "kind": "List", "items": [
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
     "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}}]}


def sysctl(ns: str, key: str) -> str:
    with netns.entered(ns), open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().strip()


def get(ns: str, port: int, path: str) -> tuple[int, str, bytes]:
    with netns.entered(ns):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
        conn.connect()
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def config_file(tmp_path, **fields) -> str:
    path = tmp_path / "config.conf"
    path.write_text(yaml.safe_dump({"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
                                    "clusterCIDR": "10.244.0.0/16", **fields}))
    return str(path)


def test_init_only_applies_the_conntrack_sysctls_in_the_nodes_namespace(namespaces, tmp_path):
    ns = namespaces.new("init")
    config = config_file(tmp_path, conntrack={"tcpEstablishedTimeout": "2h", "tcpCloseWaitTimeout": "30m",
                                              "udpTimeout": "45s", "tcpBeLiberal": True, "maxPerCore": 0})
    out = subprocess.run(["ip", "netns", "exec", ns, PYPROXY, "run", f"--config={config}", "--init-only"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sysctl(ns, "net.netfilter.nf_conntrack_tcp_timeout_established") == "7200"
    assert sysctl(ns, "net.netfilter.nf_conntrack_tcp_timeout_close_wait") == "1800"
    assert sysctl(ns, "net.netfilter.nf_conntrack_udp_timeout") == "45"
    assert sysctl(ns, "net.netfilter.nf_conntrack_tcp_be_liberal") == "1"
    assert "Traceback" not in out.stderr


def test_metrics_address_paths_and_exit_on_config_change(namespaces, tmp_path):
    ns = namespaces.new("run")
    manifest = tmp_path / "cluster.yaml"
    manifest.write_text(yaml.safe_dump(MANIFEST))
    config = config_file(tmp_path, metricsBindAddress="127.0.0.1:10249", conntrack={"tcpBeLiberal": True})
    proc = subprocess.Popen(["ip", "netns", "exec", ns, PYPROXY, "run", "-f", str(manifest), "--node", "n1",
                             f"--config={config}", "--v=2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                status, _, body = get(ns, 10249, "/metrics")
                synced = [line for line in body.decode().splitlines()
                          if line.startswith("kubeproxy_sync_proxy_rules_last_timestamp_seconds")]
                if synced and float(synced[0].split()[-1]) > 0 and b"process_cpu_seconds_total" in body:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "no metrics"
            time.sleep(0.2)
        assert get(ns, 10249, "/proxyMode")[2] == b"iptables"
        configz = json.loads(get(ns, 10249, "/configz")[2])["kubeproxy.config.k8s.io"]
        assert configz["mode"] == "iptables" and configz["healthzBindAddress"] == "0.0.0.0:10256"
        assert get(ns, 10249, "/healthz")[0] == 200
        rules = subprocess.run(["ip", "netns", "exec", ns, "iptables-save", "-t", "filter"], capture_output=True,
                               text=True).stdout
        assert "KUBE-FORWARD" in rules and "INVALID" not in rules, "tcpBeLiberal: no INVALID drop, as kube-proxy"
        with open(config, "a") as f:
            f.write("# changed\n")
        proc.wait(timeout=15)
        assert proc.returncode == 1
        assert "configuration file" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_route_localnet_only_where_kube_proxy_sets_it(namespaces):
    import ipaddress

    from pyproxy.config import ProxyConfig
    from pyproxy.proxier import Proxier

    cidr = (ipaddress.ip_network("10.244.0.0/16"),)
    cases = [(dict(), "1"), (dict(node_port_addresses=("172.18.0.0/24",)), "0"),
             (dict(node_port_addresses=("127.0.0.0/8",)), "1"), (dict(node_port_addresses=("primary",)), "0"),
             (dict(localhost_node_ports=False), "0"), (dict(mode="nftables"), "0")]
    for fields, expected in cases:
        ns = namespaces.new(f"rl{len(namespaces.names)}")
        with netns.entered(ns):
            # a new namespace copies the root namespace's IPv4 `all` settings: start from the default
            with open("/proc/sys/net/ipv4/conf/all/route_localnet", "w") as f:
                f.write("0")
            Proxier("n1", ProxyConfig(cluster_cidrs=cidr, **fields), (4,))
        assert sysctl(ns, "net.ipv4.conf.all.route_localnet") == expected, fields


def test_health_check_node_ports_listen_only_on_node_port_addresses(namespaces, tmp_path):
    """nodePortAddresses set: the healthCheckNodePort server is on the node's matching address,
    not on every address (issue: a good neighbour, never open more than asked)."""
    import socket

    ns = namespaces.new("hc")
    subprocess.run(["ip", "-n", ns, "addr", "add", "172.18.0.11/32", "dev", "lo"], check=True)
    manifest = tmp_path / "cluster.yaml"
    manifest.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
         "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.11"}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb", "namespace": "default"},
         "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.20", "externalTrafficPolicy": "Local",
                  "healthCheckNodePort": 32100, "ports": [{"port": 80, "nodePort": 30080}]}}]}))
    config = config_file(tmp_path, nodePortAddresses=["172.18.0.0/24"])
    proc = subprocess.Popen(["ip", "netns", "exec", ns, PYPROXY, "run", "-f", str(manifest), "--node", "n1",
                             f"--config={config}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def answers(host: str) -> bool:
        with netns.entered(ns):
            sock = socket.socket()
        with sock:
            sock.settimeout(0.5)
            return sock.connect_ex((host, 32100)) == 0

    try:
        deadline = time.monotonic() + 10
        while not answers("172.18.0.11"):
            assert time.monotonic() < deadline, "no healthCheckNodePort server on the node's address"
            time.sleep(0.2)
        assert not answers("127.0.0.1"), "nothing listens on an address outside nodePortAddresses"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_node_cidr_mode_waits_for_the_pod_cidr_and_restarts_when_it_changes(namespaces, tmp_path):
    """detectLocalMode NodeCIDR, as kube-proxy: no rules until the Node has a podCIDR (every pod
    match is written from it), then exit 1 when it changes, to be restarted with the new one."""
    ns = namespaces.new("ncidr")
    manifest = tmp_path / "cluster.yaml"

    def write(pod_cidr):
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                "spec": {"podCIDR": pod_cidr} if pod_cidr else {},
                "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.11"}]}}
        endpoints = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                     "metadata": {"name": "web-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
                     "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": "n1"}], "ports": [{"port": 80}]}
        manifest.write_text(yaml.safe_dump({**MANIFEST, "items": MANIFEST["items"] + [endpoints, node]}))

    def nat():
        return subprocess.run(["ip", "netns", "exec", ns, "iptables-save", "-t", "nat"], capture_output=True,
                              text=True).stdout
    write(None)
    config = config_file(tmp_path, detectLocalMode="NodeCIDR", iptables={"minSyncPeriod": "0s"})
    proc = subprocess.Popen(["ip", "netns", "exec", ns, PYPROXY, "run", "-f", str(manifest), "--node", "n1",
                             f"--config={config}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        assert proc.poll() is None and "10.96.0.10" not in nat(), "no rules before the podCIDR is known"
        write("10.244.1.0/24")
        deadline = time.monotonic() + 10
        while "10.96.0.10" not in nat():
            assert time.monotonic() < deadline, "rules once the podCIDR is known"
            time.sleep(0.1)
        assert "! -s 10.244.1.0/24" in nat(), "pod traffic told apart by the node's podCIDR"
        write("10.244.9.0/24")
        proc.wait(timeout=15)
        assert proc.returncode == 1
        log = proc.stderr.read()
        assert "waiting for node n1's podCIDR" in log and "podCIDRs changed" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

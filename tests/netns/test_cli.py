"""The CLI as a user runs it: `ip netns exec NS pyproxy ...` in namespaces made by the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from pyproxy.lab import Lab
from pyproxy.lab.cluster import cluster_objects
from pyproxy.lab.spec import parse_spec
from tests.factories import service

PYPROXY = os.path.join(os.path.dirname(sys.executable), "pyproxy")
GOLDEN = os.path.join(os.path.dirname(__file__), "..", "unit", "golden", "kube_proxy_overall.yaml")


def cli(ns: str | None, *args: str) -> subprocess.CompletedProcess:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    return subprocess.run([*prefix, PYPROXY, *args], capture_output=True, text=True)


def save(ns: str, variant: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, f"iptables-{variant}-save"], capture_output=True, text=True).stdout


@pytest.mark.parametrize("variant", ["legacy", "nft"])
def test_run_once_then_diff_then_cleanup(namespaces, variant):
    ns = namespaces.new("node")
    common = ["-f", GOLDEN, "--node", "test-node", "--cluster-cidr", "10.0.0.0/8"]
    # a foreign rule and chain that cleanup must leave alone
    subprocess.run(["ip", "netns", "exec", ns, f"iptables-{variant}", "-N", "MY-CHAIN"], check=True)
    subprocess.run(["ip", "netns", "exec", ns, f"iptables-{variant}", "-A", "INPUT", "-s", "192.0.2.1", "-j", "MY-CHAIN"],
                   check=True)

    out = cli(ns, "run", "--once", "--iptables-variant", variant, *common)
    assert out.returncode == 0, out.stderr
    assert "synced ipv4: full" in out.stderr

    same = cli(ns, "diff", "--iptables-variant", variant, *common)
    assert (same.returncode, same.stdout.strip()) == (0, f"no differences (iptables-{variant})"), same.stderr

    sep = "KUBE-SEP-SXIVWICOYRO3J4NJ"
    subprocess.run(["ip", "netns", "exec", ns, f"iptables-{variant}", "-t", "nat", "-F", sep], check=True)
    changed = cli(ns, "diff", "--iptables-variant", variant, *common)
    assert changed.returncode == 1
    missing = [l for l in changed.stdout.splitlines() if l.startswith("-") and not l.startswith("---")]
    assert len(missing) == 2 and all(sep in l for l in missing), changed.stdout

    assert cli(ns, "cleanup", "--iptables-variant", variant).returncode == 0
    after = save(ns, variant)
    assert "KUBE-" not in after
    assert "-A INPUT -s 192.0.2.1/32 -j MY-CHAIN" in after


def test_dump_reports_bad_objects_and_keeps_the_good(tmp_path):
    objs = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "good", "namespace": "ns"},
         "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad", "namespace": "ns"},
         "spec": {"clusterIP": "10.96.0.300", "ports": [{"port": 80}]}},
    ]
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump_all(objs))
    out = cli(None, "dump", "-f", str(path), "--node", "n1")
    assert out.returncode == 0
    assert "skipped: Service ns/bad: spec.clusterIPs[0]: invalid IP address '10.96.0.300'" in out.stderr
    assert '"ns/good has no endpoints"' in out.stdout and "ns/bad" not in out.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [unclosed")
    out = cli(None, "dump", "-f", str(broken), "--node", "n1")
    assert out.returncode == 2 and "not valid YAML" in out.stderr


def test_config_errors_name_the_field(tmp_path):
    cfg = tmp_path / "kp.yaml"
    cfg.write_text("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
                   "iptables: {masqueradeBit: 40}\n")
    out = cli(None, "dump", "-f", GOLDEN, "--node", "n1", "--config", str(cfg))
    assert out.returncode == 2 and "iptables.masqueradeBit: must be 0-31, got 40" in out.stderr


SPEC = {"name": "t-run", "nodes": [{"name": "n1", "podCIDR": "10.244.1.0/24"}],
        "pods": [{"name": "a", "node": "n1", "labels": {"app": "a"}}, {"name": "b", "node": "n1", "labels": {"app": "b"}},
                 {"name": "client", "node": "n1"}]}


def _svc(selector: str) -> dict:
    return service("web", "10.96.0.10", (80,), namespace="default", api_version=True, selector={"app": selector})


def _wait_for(lab: Lab, pod: str, deadline: float = 5.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        try:
            if lab.request("client", "10.96.0.10", 80, timeout=0.3).pod == pod:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"traffic did not reach {pod} within {deadline}s")


def test_run_follows_the_manifests_file(tmp_path):
    lab = Lab(parse_spec(SPEC)).up(replace=True)
    proc = None
    try:
        path = tmp_path / "cluster.yaml"
        path.write_text(yaml.safe_dump_all(cluster_objects(lab, [_svc("a")])))
        proc = subprocess.Popen(["ip", "netns", "exec", lab.node_ns("n1"), PYPROXY, "run", "-f", str(path),
                                 "--node", "n1", "--cluster-cidr", "10.244.0.0/16"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait_for(lab, "a")
        path.write_text(yaml.safe_dump_all(cluster_objects(lab, [_svc("b")])))
        assert _wait_for(lab, "b") < 3.0
        path.write_text("kind: [broken")  # a broken file keeps the previous rules
        time.sleep(1.5)
        assert lab.request("client", "10.96.0.10", 80).pod == "b"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert "keeping the previous state" in err and "synced ipv4: partial" in err
        assert lab.request("client", "10.96.0.10", 80).pod == "b", "rules stay after the daemon stops"
    finally:
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()
        lab.down()


def test_ipvs_mode_on_a_kernel_without_ip_vs_stops_with_the_module_name(namespaces):
    """This machine's kernel has no ip_vs (the IPVS suite itself runs in a qemu guest: tests/vm)."""
    if os.path.exists("/proc/net/ip_vs"):
        pytest.skip("this kernel has ip_vs")
    ns = namespaces.new("node")
    out = cli(ns, "run", "--once", "--backend", "ipvs", "-f", GOLDEN, "--node", "test-node")
    assert out.returncode == 2
    assert "IPVS mode needs the ip_vs kernel module" in out.stderr and "Traceback" not in out.stderr
    assert save(ns, "legacy").count("KUBE-") == 0, "nothing was programmed"
    dump = cli(None, "dump", "--backend", "ipvs", "-f", GOLDEN, "--node", "test-node")
    assert dump.returncode == 0 and "-A -t 172.30.0.41:80 -s rr" in dump.stdout, "dump needs no kernel"

"""The bad-input issue's findings 3 and 4, as a user meets them on the command line: a one-line
error and exit 1 or 2 (never a traceback), or the bad object skipped with one line and the rest
rendered; YAML alias bombs and big files cost bounded time and memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

PYPROXY = os.path.join(os.path.dirname(sys.executable), "pyproxy")
GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "kube_proxy_overall.yaml")
GOOD = "---\napiVersion: v1\nkind: Service\nmetadata: {name: good}\nspec: {clusterIP: 10.96.0.6, ports: [{port: 80}]}\n"


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PYPROXY, *args], capture_output=True, text=True, input=stdin, timeout=60)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode in (1, 2), (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(("Usage:", "Try "))]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("content, message", [
    (b"kind: Service\n\xff\xfe\n", "not UTF-8"),
    (b"", "no Kubernetes object"),
    (b"- [unclosed\n", "not valid YAML"),
])
def test_unusable_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "f.yaml"
    path.write_bytes(content)
    assert message in one_line_error(cli("dump", "-f", str(path), "--node", "n1"))


@pytest.mark.parametrize("document, message", [
    ("kind: 5\nmetadata: {name: x}\n", "kind: expected a string"),
    ("kind: Node\nmetadata: {name: n1, labels: [1]}\n", "metadata.labels: expected a map"),
    ("kind: Node\nmetadata: 5\n", "metadata: expected an object"),
    ("kind: Service\nmetadata: {name: s}\nspec: {clusterIP: 10.96.0.5, ports: [{port: 80, name: 'a b'}]}\n",
     "spec.ports[0].name"),
])
def test_a_bad_object_is_one_skipped_line_and_the_rest_renders(tmp_path, document, message):
    path = tmp_path / "f.yaml"
    path.write_text(document + GOOD)
    proc = cli("dump", "-f", str(path), "--node", "n1")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == 1 and message in skipped[0], proc.stderr
    assert '"default/good has no endpoints"' in proc.stdout


@pytest.mark.parametrize("config, message", [
    ("detectLocalMode: BridgeInterface\ndetectLocal: {bridgeInterface: 5}\n", "detectLocal.bridgeInterface"),
    ("ipvs: {excludeCIDRs: 10.0.0.0/8}\n", "ipvs.excludeCIDRs"),
    ("nodePortAddresses: [5]\n", "nodePortAddresses[0]"),
    ("iptables: {syncPeriod: 1e20}\n", "iptables.syncPeriod"),
    ("iptables: {syncPeriod: .inf}\n", "iptables.syncPeriod"),
    ("iptables: {minSyncPeriod: -5}\n", "iptables.minSyncPeriod"),
    ("healthzBindAddress: abc\n", "healthzBindAddress"),
    ("healthzBindAddress: ':99999'\n", "healthzBindAddress"),
    ("metricsBindAddress: ':'\n", "metricsBindAddress"),
])
def test_bad_configuration_values_are_one_line_naming_the_field(tmp_path, config, message):
    path = tmp_path / "kp.yaml"
    path.write_text("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n" + config)
    assert message in one_line_error(cli("dump", "-f", GOLDEN, "--node", "n1", "--config", str(path)))


@pytest.mark.parametrize("args, message", [
    (["--src", "bogus", "--dst", "10.96.0.10"], "--src"),
    (["--src", "10.0.0.1", "--dst", "999.1.1.1"], "--dst"),
])
def test_trace_addresses_are_checked(args, message):
    proc = cli("trace", "-f", GOLDEN, "--node", "test-node", *args, "--dport", "80")
    assert message in one_line_error(proc)


def test_a_yaml_alias_bomb_costs_bounded_time_and_memory(tmp_path):
    levels = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    levels += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    bomb = ("apiVersion: v1\nkind: Service\nmetadata:\n  name: bomb\n  annotations:\n"
            + "\n".join("    " + line for line in levels)
            + "\n  labels: {x: *a9}\nspec:\n  clusterIP: 10.96.0.5\n  ports: *a9\n  externalIPs: *a9\n" + GOOD)
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb)  # 9^10 = 3.5 billion strings if expanded
    start = time.monotonic()
    # A fresh wrapper process: its RUSAGE_CHILDREN is this one dump's peak (in this test process
    # it would be the largest of every child the whole run had).
    wrapper = ("import resource, subprocess, sys\n"
               "code = subprocess.run(sys.argv[1:]).returncode\n"
               "sys.stderr.write(f'PEAK {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n')\n"
               "sys.exit(code)\n")
    child = subprocess.run([sys.executable, "-c", wrapper, PYPROXY, "dump", "-f", str(path), "--node", "n1"],
                           capture_output=True, text=True, timeout=60)
    took = time.monotonic() - start
    out, err = child.stdout, child.stderr
    assert child.returncode == 0 and "skipped: Service default/bomb" in err, err
    assert '"default/good has no endpoints"' in out
    assert took < 20, f"{took:.1f}s"
    peak = int(err.rsplit("PEAK ", 1)[1].split()[0])
    assert peak < 300 * 1024, f"peak RSS {peak // 1024} MB"

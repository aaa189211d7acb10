"""The namespace lab: real pods attached by pyproxy-bridge, real TCP and UDP between them."""

import itertools
import os
import subprocess
import sys
import time

import pytest

from pyproxy.lab import Lab, LabError
from pyproxy.lab.controlplane import exited
from pyproxy.lab.lab import list_netns
from pyproxy.lab.spec import parse_spec

SPEC = {
    "name": "t-lab",
    "nodes": [{"name": "n1", "podCIDR": "10.244.1.0/24"}, {"name": "n2", "podCIDR": "10.244.2.0/24"}],
    "pods": [{"name": "a1", "node": "n1"}, {"name": "a2", "node": "n1"},
             {"name": "b1", "node": "n2"}, {"name": "b2", "node": "n2"}],
}

PYPROXY = os.path.join(os.path.dirname(sys.executable), "pyproxy")  # the venv's, not whatever PATH has


@pytest.fixture(scope="module")
def lab():
    lab = Lab(parse_spec(SPEC)).up(SPEC, replace=True)
    yield lab
    lab.down()
    assert not [ns for ns in list_netns() if ns.startswith("pxl-t-lab-")]


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_every_pod_reaches_every_other_pod_and_sees_its_real_ip(lab, proto):
    for src, dst in itertools.permutations(lab.pods, 2):
        reply = lab.request(src, lab.pods[dst].ip, 8080, proto)
        assert reply.pod == dst
        assert reply.client == lab.pods[src].ip


def test_external_client_reaches_nodes_only(lab):
    # a node answers (nothing listens: a RST, not a timeout), a pod has no route from outside
    with pytest.raises(ConnectionRefusedError):
        lab.request("external", str(lab.spec.nodes[1].ip), 9, timeout=1)
    with pytest.raises(OSError) as err:
        lab.request("external", lab.pods["b1"].ip, 8080, timeout=0.5)
    assert not isinstance(err.value, ConnectionRefusedError)


def test_pod_addresses_come_from_the_node_pod_cidr(lab):
    assert [lab.pods[p].ip for p in ("a1", "a2", "b1", "b2")] == ["10.244.1.2", "10.244.1.3", "10.244.2.2", "10.244.2.3"]


def test_a_second_up_is_refused_and_down_cleans_a_crashed_lab(lab):
    with pytest.raises(LabError, match="already up"):
        Lab(parse_spec(SPEC)).up(SPEC)
    # a crashed lab: namespaces left with no state file
    crashed = {**SPEC, "name": "t-crash"}
    subprocess.run(["ip", "netns", "add", "pxl-t-crash-n-n1"], check=True)
    assert Lab.down_by_name("t-crash") == ["pxl-t-crash-n-n1"]
    assert Lab(parse_spec(crashed)).up(crashed).down()
    # what a test run killed half-way leaves (namespaces, state, a running pod): replaced on request
    left = Lab(parse_spec(crashed)).up(crashed)
    echo_pid = next(iter(left.pods.values())).pid
    again = Lab(parse_spec(crashed)).up(crashed, replace=True)
    assert exited(echo_pid)
    assert set(again.pods) == set(left.pods)
    again.down()


def test_cli_status_and_exec(lab):
    status = subprocess.run([PYPROXY, "lab", "status", "--name", "t-lab", "-o", "json"], capture_output=True, text=True)
    assert status.returncode == 0 and '"a1"' in status.stdout
    out = subprocess.run([PYPROXY, "lab", "exec", "--name", "t-lab", "a1", "--", "ip", "-4", "-o", "addr", "show", "eth0"],
                         capture_output=True, text=True)
    assert "10.244.1.2/24" in out.stdout


def test_lab_processes_are_stopped_by_another_process(namespaces, tmp_path):
    """`pyproxy lab down` runs in a process of its own: it must still recognise and stop what the
    lab started, pyproxy's daemons (a script: /proc shows its interpreter first) included."""
    import subprocess
    import sys

    from pyproxy.lab.controlplane import ProcessTable, start_process

    ns = namespaces.new("ptab")
    pyproxy = os.path.join(os.path.dirname(sys.executable), "pyproxy")
    manifest = os.path.join(os.path.dirname(__file__), "..", "unit", "golden", "kube_proxy_overall.yaml")
    table = ProcessTable(str(tmp_path / "processes.json"))
    proc = start_process("dns", [pyproxy, "dns", "serve", "-f", manifest, "--listen", "127.0.0.1:10053"], ns,
                         str(tmp_path / "dns.log"))
    table.add(proc)
    out = subprocess.run([sys.executable, "-c", "import sys; from pyproxy.lab.controlplane import ProcessTable; "
                          "ProcessTable(sys.argv[1]).stop_all()", table.path], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    for _ in range(50):
        if exited(proc.pid):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the daemon is still running")

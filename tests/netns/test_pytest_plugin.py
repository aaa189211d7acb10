"""The lab as a pytest plugin, used as an outside project uses it: its own pytest run, the plugin
enabled by its ini file (examples/integration-tests), or not enabled at all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pyproxy.lab.lab import list_netns

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "integration-tests")


def pytest_run(cwd, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=240, **kwargs)


def lab_namespaces() -> set[str]:
    return {ns for ns in list_netns() if ns.startswith("pxl-u")}


def test_the_example_project_passes_and_leaves_nothing_behind():
    before = lab_namespaces()
    out = pytest_run(EXAMPLE)
    assert out.returncode == 0 and "3 passed" in out.stdout, out.stdout + out.stderr
    assert lab_namespaces() == before


def test_parallel_workers_get_labs_of_their_own():
    out = pytest_run(EXAMPLE, "-n", "2")
    assert out.returncode == 0 and "3 passed" in out.stdout, out.stdout + out.stderr


def test_the_plugin_is_off_unless_enabled(tmp_path):
    (tmp_path / "test_x.py").write_text("def test_x(pyproxy_cluster):\n    pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    out = pytest_run(tmp_path)
    assert "fixture 'pyproxy_cluster' not found" in out.stdout
    out = pytest_run(tmp_path, "-p", "pyproxy.testing.plugin")
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_failed_test_and_ctrl_c_still_remove_the_lab(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\npyproxy_lab = true\n")
    (tmp_path / "test_fail.py").write_text(
        "import time\n\n"
        "def test_fails(pyproxy_cluster):\n    assert False\n\n"
        "def test_waits(pyproxy_cluster):\n    print('LAB-UP', flush=True)\n    time.sleep(60)\n")
    before = lab_namespaces()
    out = pytest_run(tmp_path, "-k", "fails")
    assert "1 failed" in out.stdout and lab_namespaces() == before
    # Ctrl-C as a terminal delivers it: with SIGINT's default action in the child, even when this
    # run ignores it (a shell's background job does, and an ignored signal is inherited)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-k", "waits"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:
            if "LAB-UP" in line:
                break
        assert lab_namespaces() != before, "the lab was up"
        rest: list[str] = []  # read on: a child blocked on a full pipe could not finish its teardown
        reader = threading.Thread(target=lambda: rest.extend(proc.stdout), daemon=True)
        reader.start()
        proc.send_signal(signal.SIGINT)  # our own child, by PID
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError("pytest did not stop within 60 s of Ctrl-C:\n" + "".join(rest[-40:])) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.2)
    assert lab_namespaces() == before, "Ctrl-C removed the lab too"


def test_an_unsuitable_machine_is_a_skip_with_the_reason(monkeypatch):
    import pyproxy.testing as testing

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert testing.unavailable_reason() == "the pyproxy lab needs root (it creates network namespaces)"
    with pytest.raises(testing.LabUnavailable):
        testing.Cluster({"nodes": [{"name": "n1", "podCIDR": "10.244.1.0/24"}]})


def test_the_real_control_plane_is_an_opt_in_with_kubectl():
    from pyproxy.testing import Cluster, service

    spec = {"nodes": [{"name": "n1", "podCIDR": "10.244.1.0/24"}],
            "pods": [{"name": "web", "node": "n1", "labels": {"app": "web"}}, {"name": "client", "node": "n1"}]}
    with Cluster(spec, control_plane="kubernetes") as cluster:
        cluster.apply([service("web", {"app": "web"}, "10.96.0.10", 80)])
        deadline = time.monotonic() + 20
        while True:  # pyproxy follows the API server: the slice comes from its controller
            try:
                if cluster.request("client", "10.96.0.10", 80, timeout=0.5).pod == "web":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the Service was not served through the API"
            time.sleep(0.2)
        assert "web" in cluster.kubectl("get", "endpointslices", "-o", "name")
        name = cluster._lab.prefix
    assert not [ns for ns in list_netns() if ns.startswith(name)]

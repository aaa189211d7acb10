"""Real nodes: upstream's kubelet over containerd (built here) and Debian's runc, in lab nodes.

The programs are built into the upstream cache before the first test that needs them (cold:
several minutes); without root or runc the tests are skipped with the reason."""

import os
import shutil

import pytest

from pyproxy.lab import upstream

NODE_TEST_COMPONENTS = (*upstream.CONTROL_PLANE, "kubelet", "containerd", "crictl", "agnhost")
_build_error: list[str] = []


@pytest.fixture(scope="session")
def real_node_programs():
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces and cgroups")
    for tool, package in (("runc", "runc"), ("gcc", "gcc"), ("busybox", "busybox-static"),
                          ("nc.openbsd", "netcat-openbsd"), ("curl", "curl"), ("dig", "bind9-dnsutils")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install {package})")
    if _build_error:
        pytest.fail(_build_error[0])
    try:
        return upstream.ensure(*NODE_TEST_COMPONENTS, quiet=True)
    except upstream.UpstreamError as err:
        _build_error.append(f"upstream programs could not be built: {err}")
        pytest.fail(_build_error[0])

"""Pods in the lab resolve the cluster zone through pyproxy's DNS responder on their node:
real clients (dig run inside the pod's namespace, and dnspython) over the pod network."""

import subprocess

import pytest

from pyproxy.lab import Lab
from pyproxy.lab.dns import resolve, resolver_for, start_dns
from pyproxy.lab.spec import parse_spec

SPEC = {"name": "t-dns", "nodes": [{"name": "n1", "podCIDR": "10.244.1.0/24"}, {"name": "n2", "podCIDR": "10.244.2.0/24"}],
        "pods": [{"name": "db-0", "node": "n1", "labels": {"app": "db"}}, {"name": "db-1", "node": "n2", "labels": {"app": "db"}},
                 {"name": "client", "node": "n2"}]}
HEADLESS = {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": "db"},
            "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"name": "pg", "port": 80}]}}


@pytest.fixture(scope="module")
def lab():
    lab = Lab(parse_spec(SPEC)).up(replace=True)
    yield lab
    lab.down()


def test_pods_resolve_a_headless_service_through_their_node(lab):
    server = start_dns(lab, [HEADLESS], node="n2")
    try:
        want = sorted([lab.pods["db-0"].ip, lab.pods["db-1"].ip])
        assert resolve(lab, "client", "db.default.svc.cluster.local") == want
        out = subprocess.run(["ip", "netns", "exec", lab.pods["client"].netns, "dig", f"@{resolver_for(lab, 'client')}",
                              "+short", "_pg._tcp.db.default.svc.cluster.local", "SRV"], capture_output=True, text=True)
        targets = sorted(line.split()[3] for line in out.stdout.splitlines())
        dashed = sorted(f"{ip.replace('.', '-')}.db.default.svc.cluster.local." for ip in want)
        assert targets == dashed
    finally:
        server.stop()

"""What a user's own integration tests look like with pyproxy's lab (run them as root:
`python -m pytest` in this folder). Each test gets a fresh cluster of network namespaces."""

import pytest

from pyproxy.testing import service

TWO_NODES = {
    "nodes": [{"name": "node1", "podCIDR": "10.244.1.0/24"}, {"name": "node2", "podCIDR": "10.244.2.0/24"}],
    "pods": [{"name": "web-1", "node": "node1", "labels": {"app": "web"}},
             {"name": "web-2", "node": "node2", "labels": {"app": "web"}},
             {"name": "client", "node": "node1"}],
}


@pytest.mark.pyproxy_lab(spec=TWO_NODES)
def test_a_cluster_ip_reaches_both_pods(pyproxy_cluster):
    pyproxy_cluster.apply([service("web", {"app": "web"}, "10.96.0.10", 80)])
    answered = {pyproxy_cluster.request("client", "10.96.0.10", 80).pod for _ in range(30)}
    assert answered == {"web-1", "web-2"}


@pytest.mark.pyproxy_lab(spec=TWO_NODES, backend="nftables")
def test_external_traffic_policy_local_keeps_the_client_address(pyproxy_cluster):
    pyproxy_cluster.apply([service("web", {"app": "web"}, "10.96.0.11", 80, type="NodePort",
                                   externalTrafficPolicy="Local",
                                   ports=[{"port": 80, "targetPort": 80, "nodePort": 30080}])])
    reply = pyproxy_cluster.request("external", pyproxy_cluster.node_ip("node2"), 30080)
    assert reply.pod == "web-2", "only the node's own endpoint"
    assert reply.client == pyproxy_cluster.external_ip, "the client's address is kept"


def test_a_pod_on_the_other_node_is_reachable_by_its_ip(pyproxy_cluster):
    reply = pyproxy_cluster.request("client", pyproxy_cluster.pod_ip("web-2"), 80, proto="udp")
    assert (reply.pod, reply.client) == ("web-2", pyproxy_cluster.pod_ip("client"))
    route = pyproxy_cluster.exec("client", ["ip", "route", "get", pyproxy_cluster.pod_ip("web-2")]).stdout
    assert "via 10.244.1.1" in route, "pods reach other nodes through their own node"

"""Two real Kubernetes nodes (kubelet + containerd, one pair per lab node, in the node's network
namespace) on the lab's real control plane: pods get their addresses from pyproxy-bridge through
the CRI, and reach each other and the nodes across the lab's network."""

import ipaddress
import json
import time
import urllib.parse
import urllib.request
import uuid

import pytest

from pyproxy import netns
from pyproxy.lab import proxies, realnode


def _get(ns: str, url: str, timeout: float = 5) -> str:
    with netns.entered(ns):  # urllib connects in this thread: the socket is made in `ns`
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read().decode()


@pytest.fixture(scope="module")
def real_cluster(real_node_programs):
    started = time.monotonic()
    with realnode.two_node_cluster("rn" + uuid.uuid4().hex[:6]) as (lab, _):
        print(f"lab and real nodes Ready in {time.monotonic() - started:.1f}s")
        yield lab


def _ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def _wait_ready(lab, names: list[str], timeout: float = 60) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        pods = {n: lab.cp.api.get("Pod", n, "default") for n in names}
        if all(p.get("status", {}).get("podIP") and _ready(p) for p in pods.values()):
            return pods
        if time.monotonic() > deadline:
            raise AssertionError("pods not Ready: " + json.dumps({n: p.get("status") for n, p in pods.items()})[:2000])
        time.sleep(0.3)


def _dial(lab, src_pod: dict, host: str, port: int, tries: int = 1, request: str = "hostname") -> list[str]:
    """agnhost's /dial in `src_pod`: it connects to host:port `tries` times and lists the answers."""
    query = urllib.parse.urlencode({"request": request, "protocol": "http", "host": host, "port": port,
                                    "tries": tries})
    node = src_pod["spec"]["nodeName"]
    answer = json.loads(_get(lab.node_ns(node), f"http://{src_pod['status']['podIP']}:8080/dial?{query}", 30))
    return answer.get("responses") or []


def test_pods_on_two_real_nodes_get_bridge_addresses_and_talk(real_cluster):
    lab = real_cluster
    for n in lab.spec.nodes:
        node = lab.cp.api.get("Node", n.name)
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://2.")
        assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.37.2"
    for pod, node in (("web1", "node1"), ("web2", "node2")):
        lab.cp.api.request("POST", "/api/v1/namespaces/default/pods", realnode.pod_manifest(pod, node))
    pods = _wait_ready(lab, ["web1", "web2"])
    ips = {name: pod["status"]["podIP"] for name, pod in pods.items()}
    for name, node in (("web1", "node1"), ("web2", "node2")):
        assert ipaddress.ip_address(ips[name]) in lab.spec.node(node).pod_cidr
        # the address is pyproxy-bridge's: its host-local store on that node holds it
        with open(f"{lab.dir}/nodes/{node}/ipam/pyproxy-lab/{ips[name]}") as f:
            assert f.read().strip()
    # node -> pod on the other node (host-gw routes of the lab network)
    assert _get(lab.node_ns("node2"), f"http://{ips['web1']}:8080/hostname") == "web1"
    assert _get(lab.node_ns("node1"), f"http://{ips['web2']}:8080/hostname") == "web2"
    # pod -> pod across nodes, the way upstream's e2e checks it: agnhost's /dial in one pod
    for src, dst in (("web1", "web2"), ("web2", "web1")):
        node = pods[src]["spec"]["nodeName"]
        query = urllib.parse.urlencode({"request": "hostname", "protocol": "http", "host": ips[dst],
                                        "port": 8080, "tries": 1})
        answer = json.loads(_get(lab.node_ns(node), f"http://{ips[src]}:8080/dial?{query}"))
        assert answer.get("responses") == [dst], answer
    # the pod's source address is kept pod to pod (no masquerade)
    query = urllib.parse.urlencode({"request": "clientip", "protocol": "http", "host": ips["web2"], "port": 8080,
                                    "tries": 1})
    answer = json.loads(_get(lab.node_ns("node1"), f"http://{ips['web1']}:8080/dial?{query}"))
    assert answer["responses"][0].rsplit(":", 1)[0] == ips["web1"], answer


def test_pyproxy_serves_a_cluster_ip_to_pods_on_real_nodes(real_cluster):
    """pyproxy on both nodes (daemonset.yaml's ServiceAccount, RBAC and ConfigMap, as the lab
    runs it), a Service over pods whose readiness the kubelets report: the EndpointSlice
    controller's slices, pyproxy's rules, pods on both nodes reaching both backends."""
    lab = real_cluster
    kube, config = proxies.deploy_pyproxy(lab)
    for n in lab.spec.nodes:
        proxies.start_pyproxy(lab, n.name, kube, config)
    for pod, node, app in (("be1", "node1", "be"), ("be2", "node2", "be"), ("cl1", "node1", "cl"), ("cl2", "node2", "cl")):
        lab.cp.api.request("POST", "/api/v1/namespaces/default/pods",
                           realnode.pod_manifest(pod, node, labels={"app": app}))
    lab.cp.api.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "be", "namespace": "default"},
                      "spec": {"clusterIP": "10.96.0.50", "selector": {"app": "be"},
                               "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
    pods = _wait_ready(lab, ["be1", "be2", "cl1", "cl2"])
    for client in ("cl1", "cl2"):
        deadline = time.monotonic() + 30
        while True:  # until the slice has both pods and pyproxy has synced it
            seen = set(_dial(lab, pods[client], "10.96.0.50", 80, tries=20))
            if seen == {"be1", "be2"} or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert seen == {"be1", "be2"}, (client, seen)


def test_a_pods_host_port_is_reached_on_its_nodes_address(real_cluster):
    """A pod's hostPort, the runtime's job (portmap chained after pyproxy-bridge, the ports from
    the kubelet through the CRI): the external client reaches the pod on its node's address and
    the pod sees the client's own address; the other node does not answer on that port."""
    lab = real_cluster
    pod = realnode.pod_manifest("hp1", "node1")
    pod["spec"]["containers"][0]["ports"] = [{"containerPort": 8080, "hostPort": 31555, "protocol": "TCP"}]
    lab.cp.api.request("POST", "/api/v1/namespaces/default/pods", pod)
    _wait_ready(lab, ["hp1"])
    node1, node2 = (str(lab.spec.node(n).ip) for n in ("node1", "node2"))
    assert _get(lab.external_ns, f"http://{node1}:31555/hostname") == "hp1"
    assert _get(lab.external_ns, f"http://{node1}:31555/clientip").rsplit(":", 1)[0] == str(lab.spec.external_ip)
    with pytest.raises(OSError):  # refused: nothing on node2 holds the port
        _get(lab.external_ns, f"http://{node2}:31555/hostname", timeout=3)

"""pyproxy deployed the way a user deploys it: its image built from the repository's Dockerfile
(podman, on a debian:12-slim made here by debootstrap), imported on two real nodes, and
`kubectl apply -f daemonset.yaml`; then a Deployment's pods (real ReplicaSet controller and
scheduler) behind a ClusterIP, a NodePort and an eTP=Local NodePort, and a name resolved through
CoreDNS's `kube-dns` Service, which pyproxy programs too."""

import json
import time
import urllib.parse
import uuid

import pytest

from pyproxy.lab import conformance, imagebuild, realnode
from tests.node.test_real_node import _dial, _get, _ready

CLUSTER_IP, NODE_PORT, LOCAL_NODE_PORT = "10.96.0.50", 30080, 30081


@pytest.fixture(scope="module")
def cluster(real_node_programs):
    try:
        archive = conformance.proxy_image("pyproxy")
    except imagebuild.ImageBuildError as err:
        pytest.fail(f"pyproxy's image could not be built from the Dockerfile: {err}")
    with realnode.two_node_cluster("ds" + uuid.uuid4().hex[:6], services=True) as (lab, nodes):
        took = realnode.apply_daemonset(lab, nodes, archive, conformance.MANIFESTS["pyproxy"])
        print(f"kubectl apply -f daemonset.yaml to pyproxy Ready on both nodes: {took:.1f}s")
        yield lab


def _deployment(name: str, replicas: int) -> dict:
    labels = {"app": name}
    pod = realnode.pod_manifest(name, "", labels=labels)
    del pod["spec"]["nodeName"]
    # one per node at most apart: both nodes hold backends
    pod["spec"]["topologySpreadConstraints"] = [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                                 "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": labels}}]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": pod["spec"]}}}


def _ready_pods(lab, app: str, count: int, timeout: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        pods = [p for p in lab.cp.api.list("Pod", "default", labelSelector=f"app={app}")
                if p.get("status", {}).get("podIP") and _ready(p)]
        if len(pods) == count:
            return pods
        assert time.monotonic() < deadline, f"{len(pods)} of {count} {app} pods Ready"
        time.sleep(0.5)


def _until(check, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(1)


def test_pyproxy_from_daemonset_yaml_serves_a_deployment(cluster):
    lab = cluster
    ds_pods = lab.cp.api.list("Pod", "kube-system", labelSelector="k8s-app=pyproxy")
    assert sorted(p["spec"]["nodeName"] for p in ds_pods) == ["node1", "node2"]
    assert all(p["spec"]["containers"][0]["image"] == "pyproxy:0.1.0" for p in ds_pods)

    lab.cp.api.apply(_deployment("be", 4))
    ports = [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]
    lab.cp.api.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "be", "namespace": "default"},
                      "spec": {"type": "NodePort", "clusterIP": CLUSTER_IP, "selector": {"app": "be"},
                               "ports": [{**ports[0], "nodePort": NODE_PORT}]}})
    lab.cp.api.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "be-local", "namespace": "default"},
                      "spec": {"type": "NodePort", "externalTrafficPolicy": "Local", "selector": {"app": "be"},
                               "ports": [{**ports[0], "nodePort": LOCAL_NODE_PORT}]}})
    pods = _ready_pods(lab, "be", 4)
    by_node: dict[str, set[str]] = {}
    for p in pods:
        by_node.setdefault(p["spec"]["nodeName"], set()).add(p["metadata"]["name"])
    assert sorted(by_node) == ["node1", "node2"], by_node
    everyone = set().union(*by_node.values())

    # ClusterIP from a pod on each node: every backend answers
    for node in ("node1", "node2"):
        client = next(p for p in pods if p["spec"]["nodeName"] == node)
        seen = _until(lambda: (s := set(_dial(lab, client, CLUSTER_IP, 80, tries=24))) == everyone and s)
        assert seen == everyone, (node, seen)

    # NodePort from the external client, to node1: backends on both nodes
    node1 = str(lab.spec.node("node1").ip)
    seen = _until(lambda: (s := {_get(lab.external_ns, f"http://{node1}:{NODE_PORT}/hostname") for _ in range(16)})
                  == everyone and s)
    assert seen == everyone, seen

    # eTP=Local: only node1's pods, and they see the external client's own address
    def local_answers():
        return {_get(lab.external_ns, f"http://{node1}:{LOCAL_NODE_PORT}/hostname") for _ in range(12)}
    assert _until(lambda: local_answers() == by_node["node1"]), local_answers()
    client_ip = _get(lab.external_ns, f"http://{node1}:{LOCAL_NODE_PORT}/clientip").rsplit(":", 1)[0]
    assert client_ip == str(lab.spec.external_ip)

    # a pod resolves the Service's name through CoreDNS (kube-dns, itself a ClusterIP of pyproxy's)
    pod = pods[0]
    query = urllib.parse.urlencode({"cmd": "getent hosts be.default.svc.cluster.local"})
    url = f"http://{pod['status']['podIP']}:8080/shell?{query}"
    answer = json.loads(_get(lab.node_ns(pod["spec"]["nodeName"]), url, 30))
    assert answer.get("output", "").split()[:1] == [CLUSTER_IP], answer


def test_rollout_restart_of_pyproxy_loses_no_request(cluster):
    """`kubectl rollout restart ds/pyproxy` while the external client keeps calling the NodePort:
    the rules stay in the kernel between the old pod and the new one's first sync."""
    lab = cluster
    _ready_pods(lab, "be", 4)
    node1 = str(lab.spec.node("node1").ip)
    before = {p["metadata"]["uid"] for p in lab.cp.api.list("Pod", "kube-system", labelSelector="k8s-app=pyproxy")}
    realnode.kubectl(lab, "-n", "kube-system", "rollout", "restart", "ds/pyproxy")
    answered, failed = 0, []
    deadline = time.monotonic() + 180
    while True:
        try:
            _get(lab.external_ns, f"http://{node1}:{NODE_PORT}/hostname", timeout=3)
            answered += 1
        except OSError as err:
            failed.append(repr(err))
        pods = lab.cp.api.list("Pod", "kube-system", labelSelector="k8s-app=pyproxy")
        renewed = len(pods) == 2 and not ({p["metadata"]["uid"] for p in pods} & before) and all(
            any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
            for p in pods)
        if renewed or time.monotonic() > deadline:
            break
    assert renewed, "both pyproxy pods replaced and Ready"
    for _ in range(20):  # and after: the new pods' rules serve
        _get(lab.external_ns, f"http://{node1}:{NODE_PORT}/hostname", timeout=3)
        answered += 1
    print(f"rollout restart: {answered} requests answered, {len(failed)} failed")
    assert not failed, failed[:5]

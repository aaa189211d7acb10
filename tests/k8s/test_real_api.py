"""pyproxy against upstream's own kube-apiserver and kube-controller-manager (built from their Go
modules, lab/upstream.py), with real packets.

The lab plays only the kubelet (Pod status after CNI ADD); Services are written through the API,
and the EndpointSlices come from upstream's controller. pyproxy runs on both nodes as
daemonset.yaml deploys it: the ServiceAccount's bound token (not an admin credential), bound to
the ClusterRole there, and the config read from the ConfigMap object.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import yaml

from pyproxy.lab import Lab
from pyproxy.lab.controlplane import Process
from pyproxy.lab.proxies import deploy_pyproxy, start_pyproxy
from pyproxy.lab.spec import parse_spec
from tests.netns.test_services import SPEC as LAB_SUITE

from .helpers import answered_by, eventually, proxy_log, service, set_lb_ingress

SPEC = {**LAB_SUITE, "name": "t-kapi", "controlPlane": "kubernetes"}  # the lab suite's nodes and pods
EXTERNAL_IP = "172.18.100.10"
LB_IP = "172.18.100.20"


@pytest.fixture(scope="module")
def lab():
    lab = Lab(parse_spec(SPEC)).up(replace=True)
    try:
        kube, config = deploy_pyproxy(lab, {"iptables": {"masqueradeBit": 14, "minSyncPeriod": "100ms",
                                                          "syncPeriod": "30s"}})
        lab.pyproxy = {n: start_pyproxy(lab, n, kube, config) for n in ("n1", "n2")}
        lab.kube_credentials = (kube, config)
        yield lab
    finally:
        lab.down()


def node_ip(lab, name: str) -> str:
    return str(lab.spec.node(name).ip)


def test_services_created_scaled_and_deleted_with_kubectl_are_followed_within_2s(lab):
    cp = lab.cp
    cp.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(service("web", "web", "10.96.0.10")))
    took = eventually(lambda: answered_by(lab, "client-1", "10.96.0.10", 80, n=16) == {"web-1", "web-2"}, 2.0)
    assert took < 2.0
    cp.kubectl("delete", "pod", "web-2", "--grace-period=0", "--force")
    lab.delete_pod("web-2")
    eventually(lambda: answered_by(lab, "client-1", "10.96.0.10", 80, n=8) == {"web-1"}, 2.0)
    lab.add_pod(next(p for p in lab.spec.pods if p.name == "web-2"))
    eventually(lambda: answered_by(lab, "client-1", "10.96.0.10", 80, n=16) == {"web-1", "web-2"}, 2.0)
    cp.kubectl("delete", "service", "web")
    eventually(lambda: answered_by(lab, "client-1", "10.96.0.10", 80, n=2) == {"-"}, 2.0)


def test_readiness_changes_through_the_api(lab):
    lab.cp.api.apply(service("ready", "web", "10.96.0.11"))
    eventually(lambda: answered_by(lab, "client-1", "10.96.0.11", 80, n=16) == {"web-1", "web-2"}, 2.0)
    lab.set_ready("web-1", False)
    eventually(lambda: answered_by(lab, "client-1", "10.96.0.11", 80, n=12) == {"web-2"}, 2.0)
    lab.set_ready("web-1", True)
    eventually(lambda: answered_by(lab, "client-1", "10.96.0.11", 80, n=16) == {"web-1", "web-2"}, 2.0)
    lab.cp.api.delete("Service", "ready", "default")


def test_node_port_and_external_traffic_policy_local_keep_the_client_address(lab):
    lab.cp.api.apply(service("local", "solo", "10.96.0.12", type="NodePort", externalTrafficPolicy="Local",
                                  ports=[{"port": 80, "targetPort": 80, "nodePort": 30081}], externalIPs=[EXTERNAL_IP]))
    lab.cp.api.apply(service("np", "web", "10.96.0.13", type="NodePort",
                                  ports=[{"port": 80, "targetPort": 80, "nodePort": 30080}]))
    eventually(lambda: answered_by(lab, "external", node_ip(lab, "n2"), 30081, n=2) == {"solo"}, 2.0)
    reply = lab.request("external", node_ip(lab, "n2"), 30081)
    assert reply.client == str(lab.spec.external_ip), "eTP=Local keeps the client address"
    assert answered_by(lab, "external", node_ip(lab, "n1"), 30081, n=2, timeout=0.7) == {"-"}, \
        "no local endpoint on n1: dropped"
    assert lab.request("client-1", EXTERNAL_IP, 80).pod == "solo", "pods short-circuit to any endpoint"
    eventually(lambda: answered_by(lab, "external", node_ip(lab, "n1"), 30080, n=16) == {"web-1", "web-2"}, 2.0)
    reply = lab.request("external", node_ip(lab, "n1"), 30080)
    assert reply.client != str(lab.spec.external_ip), "eTP=Cluster: the client address is SNATed"
    for name in ("local", "np"):
        lab.cp.api.delete("Service", name, "default")


def test_internal_traffic_policy_local_and_session_affinity(lab):
    lab.cp.api.apply(service("itp", "web", "10.96.0.14", internalTrafficPolicy="Local"))
    lab.cp.api.apply(service("sticky", "web", "10.96.0.15", sessionAffinity="ClientIP",
                                  sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}))
    eventually(lambda: answered_by(lab, "client-1", "10.96.0.14", 80, n=10) == {"web-1"}, 2.0)
    assert answered_by(lab, "client-2", "10.96.0.14", 80, n=10) == {"web-2"}
    eventually(lambda: answered_by(lab, "client-1", "10.96.0.15", 80, n=1) != {"-"}, 2.0)
    assert len(answered_by(lab, "client-1", "10.96.0.15", 80, n=20)) == 1, "ClientIP affinity holds"
    for name in ("itp", "sticky"):
        lab.cp.api.delete("Service", name, "default")


def test_load_balancer_ingress_from_the_status_subresource_and_source_ranges(lab):
    api = lab.cp.api
    api.apply(service("lb-ok", "solo", "10.96.0.16", type="LoadBalancer",
                           loadBalancerSourceRanges=[f"{lab.spec.external_ip}/32"]))
    api.apply(service("lb-no", "solo", "10.96.0.17", type="LoadBalancer",
                           ports=[{"port": 81, "targetPort": 80}], loadBalancerSourceRanges=["192.0.2.0/24"]))
    for name in ("lb-ok", "lb-no"):
        set_lb_ingress(api, name, LB_IP)  # what a cloud controller writes
    eventually(lambda: answered_by(lab, "external", LB_IP, 80, n=2) == {"solo"}, 2.0)
    assert answered_by(lab, "external", LB_IP, 81, n=2, timeout=0.7) == {"-"}, "outside the source ranges: dropped"
    for name in ("lb-ok", "lb-no"):
        api.delete("Service", name, "default")


def test_headless_services_get_no_rules_and_terminating_pods_are_a_fallback(lab):
    api = lab.cp.api
    api.apply(service("headless", "web", "None"))
    api.apply(service("term", "solo", "10.96.0.18"))
    eventually(lambda: answered_by(lab, "client-1", "10.96.0.18", 80, n=2) == {"solo"}, 2.0)
    rules = lab.exec_node("n1", ["iptables-save", "-t", "nat"])
    assert "default/headless" not in rules and "default/term" in rules
    lab.terminate_pod("solo")  # a deleting pod: terminating, still serving
    eventually(lambda: any(e.get("conditions", {}).get("terminating")
                           for s in api.list("EndpointSlice", "default", labelSelector="kubernetes.io/service-name=term")
                           for e in s.get("endpoints") or []), 2.0)
    time.sleep(0.5)
    assert answered_by(lab, "client-1", "10.96.0.18", 80, n=4) == {"solo"}, \
        "no ready endpoint left: the serving terminating one takes the traffic"
    lab.delete_pod("solo")
    lab.add_pod(next(p for p in lab.spec.pods if p.name == "solo"))
    eventually(lambda: answered_by(lab, "client-1", "10.96.0.18", 80, n=2) == {"solo"}, 2.0)
    for name in ("headless", "term"):
        api.delete("Service", name, "default")


def slice_addresses(api, service_name: str) -> set[str]:
    slices = api.list("EndpointSlice", "default", labelSelector=f"kubernetes.io/service-name={service_name}")
    return {a for s in slices for e in s.get("endpoints") or [] for a in e["addresses"]}


def served_again(lab, name: str, cluster_ip: str, timeout: float = 35) -> None:
    """Every reflector is back after an outage (each backs off on its own): a new Service is served."""
    lab.cp.api.apply(service(name, "solo", cluster_ip))
    eventually(lambda: answered_by(lab, "client-1", cluster_ip, 80, n=1) == {"solo"}, timeout)
    lab.cp.api.delete("Service", name, "default")


def test_compaction_forces_410_gone_and_a_relist_of_only_the_differences(lab):
    """pyproxy is away (stopped) while objects change and etcd is compacted past the revision
    its watches were at: on return its watches get 410 Gone and it relists."""
    api = lab.cp.api
    api.apply(service("gone", "solo", "10.96.0.19"))
    eventually(lambda: answered_by(lab, "client-1", "10.96.0.19", 80, n=1) == {"solo"}, 2.0)
    pyproxy: Process = lab.pyproxy["n1"]
    os.kill(pyproxy.pid, signal.SIGSTOP)
    try:
        # its connections drop while it sleeps, so it misses what follows
        lab.cp.restart_apiserver(lab.cp.stop_apiserver())
        api.apply(service("gone", "web", "10.96.0.19"))
        for i in range(5):
            api.apply(service(f"churn-{i}", "web", f"10.96.1.{i + 1}"))
            api.delete("Service", f"churn-{i}", "default")
        time.sleep(0.5)
        lab.cp.etcd_compact()
        lab.cp.restart_apiserver(lab.cp.stop_apiserver())  # its watch cache starts after the compaction
    finally:
        os.kill(pyproxy.pid, signal.SIGCONT)
    eventually(lambda: answered_by(lab, "client-1", "10.96.0.19", 80, n=12) == {"web-1", "web-2"}, 35)
    log = proxy_log(lab, "n1")
    assert "relisting" in log, "the watch saw 410 Gone"
    relist = [line for line in log.splitlines() if "listed" in line and "EndpointSlices" in line][-1]
    changes = int(relist.rsplit(", ", 1)[1].split()[0])
    assert 1 <= changes <= 2, f"only the changed slice is applied, not the whole list: {relist}"
    api.delete("Service", "gone", "default")
    served_again(lab, "probe-410", "10.96.0.30")


def test_api_server_down_for_30s_keeps_rules_and_resyncs_on_return(lab):
    api = lab.cp.api
    api.apply(service("steady", "solo", "10.96.0.20"))
    eventually(lambda: answered_by(lab, "client-1", "10.96.0.20", 80, n=1) == {"solo"}, 2.0)
    argv = lab.cp.stop_apiserver()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert answered_by(lab, "client-1", "10.96.0.20", 80, n=1) == {"solo"}, "rules kept while the API is gone"
        time.sleep(1)
    lab.cp.restart_apiserver(argv)
    api.apply(service("steady", "web", "10.96.0.20"))
    # the controller manager's informers back off too before it rewrites the slice: client-go's
    # reflector doubles from 0.8 s to 30 s with jitter 1.0, so one wait can last up to 60 s
    eventually(lambda: slice_addresses(api, "steady") == {lab.pods["web-1"].ip, lab.pods["web-2"].ip}, 150, 0.5)
    eventually(lambda: answered_by(lab, "client-1", "10.96.0.20", 80, n=12) == {"web-1", "web-2"}, 35)
    api.delete("Service", "steady", "default")
    served_again(lab, "probe-down", "10.96.0.31")


def test_a_cluster_role_without_watch_gives_a_clear_error(lab):
    api = lab.cp.api
    role = api.get("ClusterRole", "pyproxy")
    crippled = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "pyproxy-nowatch"},
                "rules": [dict(r, verbs=["get", "list"]) if "endpointslices" in r["resources"] else r
                          for r in role["rules"]]}
    api.apply(crippled)
    api.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "pyproxy-nowatch", "namespace": "kube-system"}})
    api.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "pyproxy-nowatch"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pyproxy-nowatch"},
               "subjects": [{"kind": "ServiceAccount", "name": "pyproxy-nowatch", "namespace": "kube-system"}]})
    kube, config = lab.kube_credentials
    from pyproxy.lab.controlplane import kubeconfig, write_yaml

    token = api.token("pyproxy-nowatch", "kube-system")
    limited = write_yaml(kube.replace("pyproxy.kubeconfig", "nowatch.kubeconfig"),
                         kubeconfig(lab.cp.server, f"{lab.cp.pki}/ca.crt", {"token": token}))
    # a node namespace of its own: the rules it writes must not disturb n1
    lab.add_shadow("nowatch")
    start_pyproxy(lab, "n1", limited, config, netns_name=lab.shadow_ns("nowatch"))
    name = "pyproxy-n1@" + lab.shadow_ns("nowatch")
    eventually(lambda: "cannot watch resource \"endpointslices\"" in proxy_log(lab, name), 10)
    log = proxy_log(lab, name)
    line = next(l for l in log.splitlines() if "cannot watch" in l)
    assert "forbidden" in line and "ERROR" in line, line
    assert "Traceback" not in log


def test_events_on_the_node_as_kube_proxy_records_them(lab):
    """`Starting` from every pyproxy through events.k8s.io (the ClusterRole daemonset.yaml grants),
    seen by kubectl as kube-proxy's are; FailedToStartProxierHealthcheck when the healthz port is
    taken (the proxy goes on without it)."""
    import socket

    from pyproxy import netns

    def node_events(reason: str, node: str) -> list[dict]:
        return [e for e in lab.cp.api.list("Event", "default")
                if e.get("reason") == reason and e.get("involvedObject", {}).get("name") == node]
    eventually(lambda: node_events("Starting", "n2"), 10)
    (starting,) = node_events("Starting", "n2")
    assert (starting["involvedObject"]["kind"], starting["type"], starting["reportingComponent"],
            starting["action"]) == ("Node", "Normal", "kube-proxy", "StartKubeProxy")
    ns = lab.add_shadow("busyport")
    with netns.entered(ns):
        taken = socket.socket()
    with taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("0.0.0.0", 10256))
        taken.listen()
        kube, config = lab.kube_credentials
        start_pyproxy(lab, "n1", kube, config, netns_name=ns)
        eventually(lambda: node_events("FailedToStartProxierHealthcheck", "n1"), 15)
    (failed,) = node_events("FailedToStartProxierHealthcheck", "n1")
    assert failed["type"] == "Warning" and "0.0.0.0:10256" in failed["message"]
    eventually(lambda: "synced ipv4" in proxy_log(lab, "pyproxy-n1@" + ns), 15)  # it runs on without healthz


def test_read_only_sys_is_a_warning_event_not_a_crash(lab):
    """In a container whose /sys is read-only kube-proxy cannot raise the conntrack limits: it
    records a `readOnlySysFS` warning on the Node and runs on. pyproxy started in a mount
    namespace of its own with /sys remounted read-only (nothing outside that namespace changes)."""
    import sys

    from pyproxy.lab.controlplane import start_process
    from pyproxy.nodesetup import READ_ONLY_SYSFS_NOTE

    ns = lab.add_shadow("rosys")
    kube, config = lab.kube_credentials
    pyproxy = os.path.join(os.path.dirname(sys.executable), "pyproxy")
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -o remount,bind,ro /sys && exec "$@"', "sh",
            pyproxy, "run", "--kubeconfig", kube, "--config", config, "--node", "n2", "--healthz-bind-address", "",
            "--metrics-bind-address", ""]
    name = "pyproxy-n2@rosys"
    lab.processes.add(start_process(name, argv, ns, os.path.join(lab.dir, "proxies", f"{name}.log")))

    def warnings() -> list[dict]:
        return [e for e in lab.cp.api.list("Event", "default")
                if e.get("reason") == "readOnlySysFS" and e.get("involvedObject", {}).get("name") == "n2"]
    eventually(lambda: warnings(), 15)
    (event,) = warnings()
    assert (event["type"], event["action"], event["message"]) == ("Warning", "StartKubeProxy", READ_ONLY_SYSFS_NOTE)
    eventually(lambda: "synced ipv4" in proxy_log(lab, name), 15)  # and it runs on
    assert "Traceback" not in proxy_log(lab, name)

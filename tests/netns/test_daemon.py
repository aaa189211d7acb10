"""The daemon end to end: `pyproxy run` in a lab node's namespace following the stand-in API
server (tests/apiserver.py, listening inside that namespace), with real traffic through it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pytest

from pyproxy import netns
from pyproxy.lab import Lab
from pyproxy.lab.cluster import endpoint_slice, node_objects
from pyproxy.lab.spec import parse_spec
from tests import factories
from tests.apiserver import FakeApiServer

PYPROXY = os.path.join(os.path.dirname(sys.executable), "pyproxy")
SPEC = {"name": "t-dmn", "nodes": [{"name": "n1", "podCIDR": "10.244.1.0/24"}],
        "pods": [{"name": "a", "node": "n1", "labels": {"app": "web"}}, {"name": "b", "node": "n1", "labels": {"app": "web"}},
                 {"name": "client", "node": "n1"}]}


class Env:
    def __init__(self, lab: Lab, api: FakeApiServer, kubeconfig: str, config: str) -> None:
        self.lab, self.api, self.kubeconfig, self.config = lab, api, kubeconfig, config
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []

    def start_daemon(self) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.lab.node_ns("n1"), PYPROXY, "run", "--kubeconfig",
                                      self.kubeconfig, "--node", "n1", "--config", self.config],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        proc = self.proc
        threading.Thread(target=lambda: [self.log.append(line) for line in proc.stderr], daemon=True).start()

    def stop_daemon(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # our own child, by PID
            self.proc.wait(timeout=10)

    def http(self, port: int, path: str) -> tuple[int, dict, dict]:
        with netns.entered(self.lab.node_ns("n1")):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
            conn.connect()
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, dict(resp.getheaders()), (json.loads(body) if path != "/metrics" else body.decode())
        finally:
            conn.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("daemon")
    lab = Lab(parse_spec(SPEC)).up(replace=True)
    api = FakeApiServer(netns_name=lab.node_ns("n1"), bookmark_interval=1.0)
    config = tmp / "kube-proxy.yaml"
    config.write_text("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
                      "clusterCIDR: 10.244.0.0/16\nminSyncPeriod: 200ms\nsyncPeriod: 30s\n")
    e = Env(lab, api, api.kubeconfig(str(tmp / "kubeconfig")), str(config))
    for node in node_objects(lab):
        api.apply(node)
    e.start_daemon()
    yield e
    e.stop_daemon()
    api.stop()
    lab.down()


def service(name: str, ip: str, ports=({"port": 80, "targetPort": 80},), **spec) -> dict:
    return factories.service(name, ip, ports, namespace="default", api_version=True, **{"selector": {"app": "web"}, **spec})


def slice_for(lab: Lab, svc: dict, pods: list[str]) -> dict:
    out = endpoint_slice(svc, [lab.pods[p] for p in pods])
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    out["metadata"]["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": now}
    return out


def answered_by(lab: Lab, ip: str, port: int, src: str = "client", n: int = 8) -> set[str]:
    out = set()
    for _ in range(n):
        try:
            out.add(lab.request(src, ip, port, timeout=0.5).pod)
        except OSError:
            out.add("-")
    return out


def eventually(check, timeout: float = 2.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s")


def test_services_created_scaled_and_deleted_are_followed_within_2s(env):
    lab, api = env.lab, env.api
    svc = service("web", "10.96.0.10")
    api.apply(svc)
    api.apply(slice_for(lab, svc, ["a"]))
    eventually(lambda: answered_by(lab, "10.96.0.10", 80, n=2) == {"a"})
    api.apply(slice_for(lab, svc, ["a", "b"]))
    eventually(lambda: answered_by(lab, "10.96.0.10", 80, n=12) == {"a", "b"})
    api.delete("EndpointSlice", "default", "web-lab")
    api.delete("Service", "default", "web")
    eventually(lambda: answered_by(lab, "10.96.0.10", 80, n=2) == {"-"})


def test_health_metrics_and_health_check_node_port(env):
    lab, api = env.lab, env.api
    local = service("local", "10.96.0.20", type="NodePort", externalTrafficPolicy="Local", healthCheckNodePort=32100,
                    ports=[{"port": 80, "targetPort": 80, "nodePort": 30100}])
    api.apply(local)
    api.apply(slice_for(lab, local, ["a", "b"]))
    eventually(lambda: answered_by(lab, "10.96.0.20", 80, n=2) <= {"a", "b"}, 3)

    def hc():
        try:
            return env.http(32100, "/")
        except OSError:
            return None
    eventually(lambda: hc() is not None and hc()[2]["localEndpoints"] == 2, 3)
    code, headers, body = hc()
    assert code == 200 and body == {"service": {"namespace": "default", "name": "local"}, "localEndpoints": 2,
                                    "serviceProxyHealthy": True}
    assert headers["X-Load-Balancing-Endpoint-Weight"] == "2" and headers["Content-Type"] == "application/json"
    api.apply(slice_for(lab, local, []))
    eventually(lambda: hc()[0] == 503, 3)
    assert hc()[2]["localEndpoints"] == 0

    code, _, body = env.http(10256, "/healthz")
    assert code == 200 and body["nodeEligible"] is True and "lastUpdated" in body and "currentTime" in body
    code, _, body = env.http(10256, "/livez")
    assert code == 200 and set(body) == {"lastUpdated", "currentTime", "healthy", "status"}  # kube-proxy's fields
    assert body["status"]["IPv4"]["healthy"] is True
    _, _, text = env.http(10249, "/metrics")
    for name in ("kubeproxy_sync_proxy_rules_duration_seconds_bucket", "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                 "kubeproxy_network_programming_duration_seconds_count", "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                 "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                 'kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv4",table="nat"}',
                 'kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family="IPv4",traffic_policy="external"} 1.0',
                 'kubeproxy_proxy_healthz_total{code="200"}'):
        assert name in text, name
    api.delete("EndpointSlice", "default", "local-lab")
    api.delete("Service", "default", "local")


def test_a_node_the_autoscaler_is_removing_fails_healthz_but_stays_alive(env):
    """kube-proxy's node eligibility: the ToBeDeletedByClusterAutoscaler taint (or a deletion in
    progress) turns /healthz to 503 so load balancers drain the node; /livez stays 200."""
    lab, api = env.lab, env.api
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
            "spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "value": "1764670000", "effect": "NoSchedule"}]},
            "status": {"addresses": [{"type": "InternalIP", "address": str(lab.spec.nodes[0].ip)}]}}
    api.apply(node)
    eventually(lambda: env.http(10256, "/healthz")[0] == 503, 3)
    assert env.http(10256, "/healthz")[2]["nodeEligible"] is False
    assert env.http(10256, "/livez")[0] == 200
    api.apply({**node, "spec": {}})
    eventually(lambda: env.http(10256, "/healthz")[0] == 200, 3)
    # the Node as the fixture made it (deleting it would restart the proxy, as kube-proxy exits then)
    api.apply(next(n for n in node_objects(lab) if n["metadata"]["name"] == "n1"))


def test_an_invalid_service_is_logged_once_and_skipped(env):
    lab, api = env.lab, env.api
    good, bad = service("good", "10.96.0.30"), service("bad", "10.96.0.31", ports=[{"port": 99999}])
    api.apply(bad)
    api.apply(good)
    api.apply(slice_for(lab, good, ["a"]))
    eventually(lambda: answered_by(lab, "10.96.0.30", 80, n=2) == {"a"}, 3)
    api.apply(slice_for(lab, good, ["b"]))  # more syncs: the warning must not repeat
    eventually(lambda: answered_by(lab, "10.96.0.30", 80, n=2) == {"b"}, 3)
    assert sum("Service default/bad: spec.ports[0].port" in line for line in env.log) == 1


def test_api_server_gone_for_30s_leaves_rules_and_relists_on_return(env):
    lab, api = env.lab, env.api
    svc = service("steady", "10.96.0.40")
    api.apply(svc)
    api.apply(slice_for(lab, svc, ["a"]))
    eventually(lambda: answered_by(lab, "10.96.0.40", 80, n=2) == {"a"}, 3)
    api.stop()
    api.apply(slice_for(lab, svc, ["b"]))  # changed while the API server is away
    api.compact()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert answered_by(lab, "10.96.0.40", 80, n=1) == {"a"}, "rules untouched while the API server is gone"
        time.sleep(1)
    api.start()
    eventually(lambda: answered_by(lab, "10.96.0.40", 80, n=3) == {"b"}, 35)  # reflector backoff is at most 30s
    assert any("relisting" in line for line in env.log) or any("listed" in line for line in env.log[-20:])
    # every reflector is back (each backs off on its own): a new Service is served too
    probe = service("probe", "10.96.0.41")
    api.apply(probe)
    api.apply(slice_for(lab, probe, ["a"]))
    eventually(lambda: answered_by(lab, "10.96.0.41", 80, n=1) == {"a"}, 35)


def test_ten_restarts_under_traffic_lose_no_request(env):
    lab, api = env.lab, env.api
    svc = service("busy", "10.96.0.50", type="NodePort", ports=[{"port": 80, "targetPort": 80, "nodePort": 30150}])
    api.apply(svc)
    api.apply(slice_for(lab, svc, ["a", "b"]))
    node_ip = str(lab.spec.nodes[0].ip)
    eventually(lambda: answered_by(lab, node_ip, 30150, src="external", n=4) == {"a", "b"}, 3)
    stop = threading.Event()
    results = {"ok": 0, "failed": []}

    def traffic(src: str, ip: str, port: int) -> None:
        while not stop.is_set():
            try:
                # generous: a daemon starting up on this 2-core machine slows everything; a
                # refused or reset connection still fails the test at once
                lab.request(src, ip, port, timeout=5)
                results["ok"] += 1
            except OSError as err:
                results["failed"].append(f"{src}->{ip}:{port}: {err!r}")
            time.sleep(0.01)

    threads = [threading.Thread(target=traffic, args=a) for a in
               (("client", "10.96.0.50", 80), ("external", node_ip, 30150))]
    for t in threads:
        t.start()
    try:
        for _ in range(10):
            env.stop_daemon()
            env.start_daemon()
            eventually(lambda: env.http(10256, "/livez")[0] == 200 if _listening(env) else False, 10)
            time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert results["failed"] == [] and results["ok"] > 100, results


def _listening(env: Env) -> bool:
    try:
        env.http(10256, "/livez")
        return True
    except OSError:
        return False

"""What a kube-proxy user scrapes, probes and types, compared with upstream's kube-proxy itself
(v1.37, built here): /metrics (every kubeproxy_* family, its type, label names and buckets),
/healthz and /livez (status codes and body fields, a node being drained, a node deleted), and
the command line (every flag `kube-proxy --help` lists is taken; an unknown one fails in the same
words). Both proxies run for the same node against the same API server, each in a namespace of
its own, in iptables and in nftables mode."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyproxy import netns
from pyproxy.lab import Lab, upstream
from pyproxy.lab.controlplane import exited
from pyproxy.lab.proxies import deploy_pyproxy, start_kube_proxy, start_pyproxy
from pyproxy.lab.spec import parse_spec

from .corpus import lab_suite_case
from .helpers import eventually

PYPROXY = os.path.join(os.path.dirname(sys.executable), "pyproxy")
SPEC = {"controlPlane": "kubernetes", "pods": [],
        "nodes": [{"name": "n1", "podCIDR": "10.244.1.0/24"}, {"name": "n2", "podCIDR": "10.244.2.0/24"}]}
# kube-proxy counts INVALID drops and localhost NodePort packets with nfacct objects; pyproxy
# writes none (README: departures)
KUBE_PROXY_ONLY = {"kubeproxy_iptables_ct_state_invalid_dropped_packets",
                   "kubeproxy_iptables_localhost_nodeports_accepted_packets"}
# samples only once a slice carrying a trigger time newer than the proxy's own start was synced:
# which of the controller's slice updates each proxy saw after its start is a race between them
# (compared when both have it; tests/netns/test_daemon.py checks pyproxy's on its own)
OBSERVED = {"kubeproxy_network_programming_duration_seconds"}


def get(ns: str, port: int, path: str) -> tuple[int, str]:
    with netns.entered(ns):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()


@pytest.fixture(scope="module", params=["iptables", "nftables"])
def pair(request):
    mode = request.param
    lab = Lab(parse_spec({**SPEC, "name": f"t-kpe{mode[:3]}"})).up(replace=True)
    try:
        kube, config = deploy_pyproxy(lab, {"mode": mode})
        kp, py = lab.add_shadow("kp"), lab.add_shadow("py")
        procs = {"kube-proxy": start_kube_proxy(lab, "n1", kp, mode=mode),
                 "pyproxy": start_pyproxy(lab, "n1", kube, config, "--iptables-variant", "legacy", netns_name=py)}
        objects, _ = lab_suite_case()
        for obj in objects:
            lab.cp.api.apply(obj)
        for ns in (kp, py):
            eventually(lambda: _synced(ns), 30, 0.5)
        # one change once both run: a queued and a partial sync on each
        lab.cp.api.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "later", "namespace": "default"},
                          "spec": {"clusterIP": "10.96.0.99", "ports": [{"port": 80}], "selector": {"app": "later"}}})
        for ns in (kp, py):
            eventually(lambda: "kubeproxy_sync_partial_proxy_rules_duration_seconds_count{" in
                       get(ns, 10249, "/metrics")[1], 40, 0.5)
        yield lab, mode, {"kube-proxy": kp, "pyproxy": py}, procs
    finally:
        lab.down()


def _synced(ns: str) -> bool:
    try:
        return get(ns, 10256, "/healthz")[0] == 200 and "kubeproxy_sync_proxy_rules_last_timestamp_seconds{" in \
            get(ns, 10249, "/metrics")[1]
    except OSError:
        return False


def exported(text: str) -> dict[str, tuple]:
    """kubeproxy_* families that have samples: name -> (type, label names, histogram buckets)."""
    out = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("kubeproxy_") or not family.samples:
            continue
        labels = sorted({k for s in family.samples for k in s.labels if k != "le"})
        buckets = sorted({float(s.labels["le"]) for s in family.samples if "le" in s.labels})
        out[family.name] = (family.type, labels, buckets)
    return out


def test_the_metrics_kube_proxy_exports(pair):
    lab, mode, ns, _ = pair
    for name in ns.values():  # both answer probes first, so the probe counters have samples
        get(name, 10256, "/healthz")
        get(name, 10256, "/livez")
    theirs = exported(get(ns["kube-proxy"], 10249, "/metrics")[1])
    ours = exported(get(ns["pyproxy"], 10249, "/metrics")[1])
    assert "kubeproxy_sync_proxy_rules_duration_seconds" in theirs, "kube-proxy's own metrics were read"
    missing = sorted(set(theirs) - set(ours) - KUBE_PROXY_ONLY - OBSERVED)
    assert not missing, f"{mode}: kube-proxy exports {missing}, pyproxy does not"
    extra = sorted(set(ours) - set(theirs) - OBSERVED)
    assert not extra, f"{mode}: pyproxy exports {extra}, kube-proxy does not"
    for name in sorted(set(theirs) & set(ours)):
        assert ours[name] == theirs[name], f"{mode}: {name}: pyproxy {ours[name]}, kube-proxy {theirs[name]}"
    status, text = get(ns["pyproxy"], 10249, "/metrics")
    assert status == 200 and "process_cpu_seconds_total" in text


def shape(body: str) -> dict:
    import json

    value = json.loads(body)
    return {k: sorted(v["IPv4"]) if k == "status" else type(v).__name__ for k, v in value.items()}


def test_health_bodies_and_a_drained_node_as_kube_proxy(pair):
    lab, mode, ns, _ = pair
    for path in ("/healthz", "/livez"):
        (kp_code, kp_body), (py_code, py_body) = (get(ns[who], 10256, path) for who in ("kube-proxy", "pyproxy"))
        assert (py_code, shape(py_body)) == (kp_code, shape(kp_body)) == (200, shape(kp_body)), path
    assert get(ns["pyproxy"], 10249, "/healthz") == get(ns["kube-proxy"], 10249, "/healthz") == (200, "ok")
    node = lab.cp.api.get("Node", "n1")
    taint = {"key": "ToBeDeletedByClusterAutoscaler", "value": "1", "effect": "NoSchedule"}
    drained = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
               "spec": {**node.get("spec", {}), "taints": [taint]}}
    lab.cp.api.apply(drained)
    try:
        for who in ns:
            eventually(lambda: get(ns[who], 10256, "/healthz")[0] == 503, 10)
        (kp_code, kp_body), (py_code, py_body) = (get(ns[who], 10256, "/healthz") for who in ("kube-proxy", "pyproxy"))
        assert '"nodeEligible":false' in kp_body.replace(" ", "") and '"nodeEligible":false' in py_body.replace(" ", "")
        assert shape(py_body) == shape(kp_body)
        assert get(ns["pyproxy"], 10256, "/livez")[0] == get(ns["kube-proxy"], 10256, "/livez")[0] == 200
    finally:
        lab.cp.api.apply({**drained, "spec": {**drained["spec"], "taints": []}})
    for who in ns:
        eventually(lambda: get(ns[who], 10256, "/healthz")[0] == 200, 10)


def test_a_deleted_node_makes_both_exit_to_be_restarted(pair):
    """Last in the module: it ends both proxies."""
    lab, mode, ns, procs = pair
    lab.cp.api.delete("Node", "n1")
    for who, proc in procs.items():
        eventually(lambda: exited(proc.pid), 15, 0.2)


SAMPLES = {"duration": "1s", "string": "x", "int32": "1", "strings": "10.0.0.0/8", "quantity": "0", "ipport": "0.0.0.0:1",
           "ip": "0.0.0.0", "mapStringBool": "TopologyAwareHints=true", "float32": "1", "ProxyMode": "iptables",
           "LocalMode": "ClusterCIDR", "Level": "2", "pattern=N...": "x=1"}


def kube_proxy_help_flags() -> dict[str, str]:
    """Every flag `kube-proxy --help` lists -> a value of its type ("true" for booleans)."""
    text = subprocess.run([os.path.join(upstream.ensure("kube-proxy"), "kube-proxy"), "--help"],
                          capture_output=True, text=True).stdout
    flags = {}
    for name, kind in re.findall(r"^\s+(?:-\w, )?--([a-z0-9-]+)(?: ([\w=.\[\]]+))?", text, re.M):
        flags[name] = SAMPLES.get(kind, "true" if not kind or not kind[0].islower() and kind not in SAMPLES
                                  else "x")
    return {k: v for k, v in flags.items() if k not in ("help", "version", "config", "write-config-to")}


def test_every_kube_proxy_flag_is_taken(tmp_path):
    """Each flag with a value of its type, and --write-config-to so nothing starts (in a scratch
    namespace all the same)."""
    flags = kube_proxy_help_flags()
    assert len(flags) > 40, flags
    out = str(tmp_path / "out.yaml")
    with netns.scratch():
        for flag, value in flags.items():
            proc = subprocess.run([PYPROXY, "run", f"--{flag}={value}", f"--write-config-to={out}"],
                                  capture_output=True, text=True, timeout=30)
            assert "unknown flag" not in proc.stderr and "Traceback" not in proc.stderr, (flag, proc.stderr)


@pytest.mark.parametrize("args", [["--bogus"], ["--iptables-masquerade-bit=x"], ["--iptables-masquerade-bit=99999999999"],
                                  ["--masquerade-all=maybe"], ["--feature-gates=Foo"], ["--feature-gates=Foo=maybe"],
                                  ["--iptables-sync-period=x"], ["--iptables-sync-period=5"], ["--cluster-cidr"],
                                  ["--kubeconfig"], ["-x"], ["extra"]])
def test_a_bad_command_line_fails_in_kube_proxys_words(tmp_path, args):
    kube_proxy = os.path.join(upstream.ensure("kube-proxy"), "kube-proxy")
    link = tmp_path / "kube-proxy"
    link.symlink_to(PYPROXY)
    with netns.scratch():  # each fails while parsing flags; were one to run, it would be in here
        theirs = subprocess.run([kube_proxy, *args], capture_output=True, text=True, timeout=30)
        ours = subprocess.run([str(link), *args], capture_output=True, text=True, timeout=30)
    last = [line for line in theirs.stderr.splitlines() if line.startswith("Error:")][-1]
    assert (ours.returncode, ours.stderr.strip()) == (theirs.returncode, last), args

"""daemonset.yaml against the Kubernetes OpenAPI schema, offline (kubernetes-validate ships the
schemas), and its embedded KubeProxyConfiguration against pyproxy's own parser."""

import os

import pytest
import yaml

import kubernetes_validate
from pyproxy.config import parse_config

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def documents():
    with open(os.path.join(ROOT, "daemonset.yaml")) as f:
        return [d for d in yaml.safe_load_all(f) if d]


@pytest.mark.parametrize("version", ["1.33.0", "1.37.0"])
def test_every_manifest_is_valid(version):
    docs = documents()
    assert [d["kind"] for d in docs] == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"]
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any schema violation


def test_rbac_is_read_only_but_events():
    role = next(d for d in documents() if d["kind"] == "ClusterRole")
    verbs = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert verbs[("", "services")] == verbs[("discovery.k8s.io", "endpointslices")] == {"get", "list", "watch"}
    assert verbs[("", "events")] == {"create", "patch"}


def test_the_daemonset_runs_like_kube_proxy():
    ds = next(d for d in documents() if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    container, dns_container = pod["containers"]
    assert dns_container["command"][:3] == ["pyproxy", "dns", "serve"]
    assert pod["hostNetwork"] and pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/run/xtables.lock", "/lib/modules"}
    assert container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_configmap_is_a_valid_kube_proxy_configuration():
    cm = next(d for d in documents() if d["kind"] == "ConfigMap")
    config = parse_config(yaml.safe_load(cm["data"]["config.conf"]))
    assert config.warnings == () and config.mode == "iptables"

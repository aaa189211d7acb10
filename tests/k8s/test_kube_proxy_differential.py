"""pyproxy and upstream's kube-proxy (same Kubernetes version, built here) for the same node,
against the same kube-apiserver, each in a namespace of its own: for every cluster of the
corpus, their iptables rulesets are the same once both have synced (tests/k8s/iptables_compare.py
says what "the same" ignores), with iptables-legacy and with iptables-nft."""

from __future__ import annotations

import difflib
import time

import pytest

from pyproxy.lab import Lab
from pyproxy.lab.proxies import deploy_pyproxy, start_kube_proxy, start_pyproxy
from pyproxy.lab.spec import parse_spec

from .corpus import lab_suite_case, random_case
from .helpers import proxy_log, set_lb_ingress
from .iptables_compare import normalise, ours, render

SPEC = {"name": "t-dif", "controlPlane": "kubernetes",
        "nodes": [{"name": "n1", "podCIDR": "10.244.1.0/24"}, {"name": "n2", "podCIDR": "10.244.2.0/24"}],
        "pods": []}
CASES = ["lab-suite"] + [f"random-{seed}" for seed in range(1, 11)]


@pytest.fixture(scope="module", params=["legacy", "nft", "dual-stack"])
def pair(request):
    dual = request.param == "dual-stack"
    variant = "legacy" if dual else request.param
    lab = Lab(parse_spec({**SPEC, "name": f"t-d{request.param[:3]}", "ipv6": dual})).up(replace=True)
    try:
        kube, config = deploy_pyproxy(lab, {"iptables": {"masqueradeBit": 14, "minSyncPeriod": "100ms",
                                                          "syncPeriod": "30s"}})
        kp, py = lab.add_shadow("kp"), lab.add_shadow("py")
        start_kube_proxy(lab, "n1", kp, variant=variant,
                         iptables={"masqueradeBit": 14, "minSyncPeriod": "100ms", "syncPeriod": "30s"})
        # no --family: pyproxy serves the families the Node has, as it does from daemonset.yaml
        start_pyproxy(lab, "n1", kube, config, "--iptables-variant", variant, netns_name=py)
        yield lab, variant, kp, py, dual
    finally:
        lab.down()


def rules(lab: Lab, ns: str, variant: str, dual: bool) -> list[str]:
    out = render(ours(normalise(lab.exec_node(ns, [f"iptables-{variant}-save"]))))
    if dual:
        out += ["# IPv6"] + render(ours(normalise(lab.exec_node(ns, [f"ip6tables-{variant}-save"]))))
    return out


def converged(lab: Lab, variant: str, kp: str, py: str, dual: bool, timeout: float = 20.0):
    """Both rulesets once they agree (or the last pair seen when they never do), unchanged for a moment."""
    deadline = time.monotonic() + timeout
    while True:
        a, b = rules(lab, kp, variant, dual), rules(lab, py, variant, dual)
        if a == b:
            time.sleep(1.0)  # still equal a second later: not a moment both were mid-sync
            a2, b2 = rules(lab, kp, variant, dual), rules(lab, py, variant, dual)
            if a2 == b2:
                return a2, b2
        if time.monotonic() > deadline:
            return a, b
        time.sleep(0.5)


def load_case(name: str, dual: bool) -> tuple[list[dict], dict[str, str]]:
    return lab_suite_case() if name == "lab-suite" else random_case(int(name.split("-")[1]), dual=dual)


@pytest.mark.parametrize("case", CASES)
def test_the_same_iptables_rules_as_kube_proxy(pair, case):
    lab, variant, kp, py, dual = pair
    api = lab.cp.api
    objects, lb = load_case(case, dual)
    for obj in objects:
        api.apply(obj)
    for name, ip in lb.items():
        set_lb_ingress(api, name, ip)
    try:
        a, b = converged(lab, variant, kp, py, dual)
        diff = "\n".join(difflib.unified_diff(a, b, "kube-proxy", "pyproxy", lineterm="", n=1))
        assert a == b, f"case {case}, iptables-{variant}{' dual-stack' if dual else ''}:\n{diff}\n--- pyproxy log tail:\n" \
                       + proxy_log(lab, f"pyproxy-n1@{py}")[-1500:]
        assert any("KUBE-SVC-" in line for line in a), "the case programmed services at all"
        assert ("dual-stack: node n1" if dual else "single-stack: node n1") in proxy_log(lab, f"pyproxy-n1@{py}")
        if dual and case != "lab-suite":
            v6 = a[a.index("# IPv6"):]
            assert any("-d fd00:10:96::" in line for line in v6), "IPv6 services were programmed"
    finally:
        for obj in objects:
            api.delete(obj["kind"], obj["metadata"]["name"], "default")

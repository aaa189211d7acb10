"""Field-by-field mutations of a valid cluster file and of a KubeProxyConfiguration (bad-input
issue): parsing never raises anything but its own one-line errors, the valid objects are still
rendered, and every ruleset rendered is accepted by the kernel's tools (`iptables-restore --test`,
`nft -c`) in a scratch namespace made here."""

from __future__ import annotations

import copy
import os
import subprocess

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyproxy.config import ConfigError, parse_config
from pyproxy.iptables.render import render as render_iptables
from pyproxy.model import parse_objects
from pyproxy.nftables.render import render as render_nft
from pyproxy.view import build_view

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "unit", "golden", "kube_proxy_overall.yaml")
with open(GOLDEN) as f:
    CLUSTER = yaml.safe_load(f)["items"]

NASTY = st.one_of(
    st.none(), st.booleans(), st.integers(-2 ** 33, 2 ** 33), st.floats(), st.text(max_size=20),
    st.sampled_from(['evil"\n-A INPUT -j ACCEPT\n#', "a" * 300, "UDP", "SCTP", "Local", "None", "10.0.0.1",
                     "fd00::1", "10.0.0.0/8", "1.2.3.4/33", "ClientIP", "LoadBalancer", "\x00", "é", "a b", "*", ";"]),
    st.lists(st.integers(0, 70000), max_size=3), st.lists(st.text(max_size=8), max_size=3),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2))


def paths(value, prefix=()):
    """Every path into a JSON-like value."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, prefix + (i,))


ALL_PATHS = [(i, p) for i, obj in enumerate(CLUSTER) for p in paths(obj) if p]


def mutate(objects, index, path, value):
    out = copy.deepcopy(objects)
    cur = out[index]
    for key in path[:-1]:
        cur = cur[key]
    cur[path[-1]] = value
    return out


def accepted(ns: str, argv: list[str], text: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], input=text, capture_output=True, text=True)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(ALL_PATHS), value=NASTY)
def test_a_mutated_cluster_still_renders_what_the_kernel_accepts(scratch_namespace, target, value):
    index, path = target
    objects = mutate(CLUSTER, index, path, value)
    cluster = parse_objects(objects)  # never raises: bad objects become errors
    assert all("\n" not in e and len(e) < 400 for e in cluster.errors), cluster.errors
    survivors = len(cluster.services) + len(cluster.slices)
    assert survivors >= len(CLUSTER) - 2, "only the mutated object (and its slice's service) may go"
    config = parse_config({"clusterCIDR": "10.0.0.0/8"})
    view = build_view(cluster, "test-node")
    for family in (4, 6):
        text = render_iptables(view, config, family).restore_text()
        tool = "iptables-legacy-restore" if family == 4 else "ip6tables-legacy-restore"
        result = accepted(scratch_namespace, [tool, "--test"], text)
        assert result.returncode == 0, f"{tool} refused: {result.stderr}\nmutation {target} = {value!r}"
    script = render_nft(view, parse_config({"clusterCIDR": "10.0.0.0/8", "mode": "nftables"}), 4).script()
    result = accepted(scratch_namespace, ["nft", "-c", "-f", "-"], script)
    assert result.returncode == 0, f"nft -c refused: {result.stderr[:500]}\nmutation {target} = {value!r}"


CONFIG = yaml.safe_load("""
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: 10.244.0.0/16
detectLocalMode: ClusterCIDR
detectLocal: {bridgeInterface: "", interfaceNamePrefix: ""}
nodePortAddresses: [172.18.0.0/24]
iptables: {masqueradeBit: 14, masqueradeAll: false, localhostNodePorts: true, minSyncPeriod: 1s, syncPeriod: 30s}
nftables: {masqueradeBit: 14, minSyncPeriod: 1s, syncPeriod: 30s}
ipvs: {scheduler: rr, strictARP: false, excludeCIDRs: [10.0.0.0/8], syncPeriod: 30s}
conntrack: {maxPerCore: 32768, min: 131072, tcpEstablishedTimeout: 24h, udpTimeout: 30s}
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 127.0.0.1:10249
clientConnection: {kubeconfig: /var/lib/kube-proxy/kubeconfig.conf, qps: 5}
oomScoreAdj: -999
logging: {verbosity: 2}
""")
CONFIG_PATHS = [p for p in paths(CONFIG) if p]


@settings(max_examples=400, deadline=None)
@given(path=st.sampled_from(CONFIG_PATHS), value=NASTY)
def test_a_mutated_configuration_is_valid_or_one_error_naming_the_field(path, value):
    raw = copy.deepcopy(CONFIG)
    cur = raw
    for key in path[:-1]:
        cur = cur[key]
    cur[path[-1]] = value
    try:
        config = parse_config(raw)
    except ConfigError as err:
        message = str(err)
        assert "\n" not in message and len(message) < 300
        assert str(path[0]) in message or "config" in message, f"{message!r} does not name {path}"
        return
    assert 0 < config.sync_period < 1e8 and 0 <= config.min_sync_period < 1e8
    assert config.healthz_bind_address.rpartition(":")[2].isdigit()

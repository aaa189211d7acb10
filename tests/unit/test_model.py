"""Parsing API objects and KubeProxyConfiguration: good input, and bad input named precisely."""

import pytest
import yaml

from pyproxy.config import ConfigError, parse_config, parse_duration
from pyproxy.model import parse_objects

KUBECTL_DUMP = """
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop, labels: {app: web}}
  spec:
    clusterIP: 10.96.0.10
    clusterIPs: [10.96.0.10, "fd00::10"]
    ipFamilies: [IPv4, IPv6]
    ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
    sessionAffinity: ClientIP
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-abc, namespace: shop, labels: {kubernetes.io/service-name: web},
             annotations: {endpoints.kubernetes.io/last-change-trigger-time: "2026-11-28T10:00:00Z"}}
  addressType: IPv4
  endpoints:
  - addresses: [10.244.1.5]
    conditions: {ready: true}
    nodeName: node-1
    hints: {forZones: [{name: zone-a}]}
  - addresses: [10.244.2.5]
    conditions: {ready: false, serving: true, terminating: true}
  ports: [{name: http, port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Node
  metadata: {name: node-1, labels: {topology.kubernetes.io/zone: zone-a}}
  spec: {podCIDR: 10.244.1.0/24}
  status: {addresses: [{type: InternalIP, address: 172.18.0.11}, {type: Hostname, address: node-1}]}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: ignored}
"""


def test_a_kubectl_dump_parses():
    cluster = parse_objects(yaml.safe_load_all(KUBECTL_DUMP))
    assert cluster.errors == []
    svc = cluster.services["shop/web"]
    assert [str(ip) for ip in svc.cluster_ips] == ["10.96.0.10", "fd00::10"]
    assert svc.session_affinity_timeout == 10800, "ClientIP without a config: kube-proxy's default"
    (eps,) = cluster.slices.values()
    assert eps.service_key == "shop/web" and eps.trigger_time == "2026-11-28T10:00:00Z"
    ready, terminating = eps.endpoints
    assert (ready.ready, ready.serving, ready.hint_zones) == (True, True, ("zone-a",))
    assert (terminating.ready, terminating.serving, terminating.terminating) == (False, True, True)
    node = cluster.nodes["node-1"]
    assert [str(a) for a in node.addresses] == ["172.18.0.11"] and node.label("topology.kubernetes.io/zone") == "zone-a"


def test_typed_lists_and_multi_documents():
    docs = [{"kind": "ServiceList", "items": [{"metadata": {"name": "a"}, "spec": {"clusterIP": "10.96.0.1",
                                                                                   "ports": [{"port": 1}]}}]},
            None,
            {"kind": "Service", "metadata": {"name": "b"}, "spec": {"clusterIP": "None"}}]
    cluster = parse_objects(docs)
    assert set(cluster.services) == {"default/a", "default/b"}
    assert cluster.services["default/b"].headless


BAD = [
    ({"kind": "Service", "metadata": {"name": "s", "namespace": "n"}, "spec": {"clusterIP": "10.96.0.1",
      "ports": [{"port": 80, "protocol": "ICMP"}]}}, "Service n/s: spec.ports[0].protocol: unsupported protocol 'ICMP'"),
    ({"kind": "Service", "metadata": {"name": "s"}, "spec": {"clusterIP": "10.96.0.1",
      "ports": [{"port": 80, "name": "a"}, {"port": 81}]}}, "spec.ports[1].name: required when a service has several ports"),
    ({"kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}, "spec.clusterIP: no cluster IP allocated"),
    ({"kind": "Service", "metadata": {"name": "s"}, "spec": {"clusterIP": "10.96.0.1", "externalTrafficPolicy": "Nearby"}},
     "spec.externalTrafficPolicy: must be Cluster or Local"),
    ({"kind": "Service", "metadata": {"name": "s"}, "spec": {"clusterIP": "10.96.0.1", "sessionAffinity": "ClientIP",
      "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}}, "timeoutSeconds: must be 1-86400"),
    ({"kind": "Service", "metadata": {"name": "s"}, "spec": {"clusterIP": "10.96.0.1", "loadBalancerSourceRanges": ["x"]}},
     "spec.loadBalancerSourceRanges[0]: invalid CIDR 'x'"),
    ({"kind": "EndpointSlice", "metadata": {"name": "e"}, "addressType": "IPv4", "endpoints": []},
     "metadata.labels[kubernetes.io/service-name]: required"),
    ({"kind": "EndpointSlice", "metadata": {"name": "e", "labels": {"kubernetes.io/service-name": "s"}},
      "addressType": "IPv4", "endpoints": [{"addresses": ["fd00::1"]}]}, "endpoints[0].addresses: address family"),
    ({"kind": "EndpointSlice", "metadata": {"name": "e", "labels": {"kubernetes.io/service-name": "s"}},
      "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}]},
     "endpoints[0].conditions.ready: expected bool"),
    ({"kind": "Node", "metadata": {"name": "n"}, "spec": {"podCIDR": "10.0.0.0/33"}}, "Node n: spec.podCIDRs[0]: invalid CIDR"),
    ({"kind": "Service", "spec": {}}, "metadata.name: required"),
]


@pytest.mark.parametrize("obj, message", BAD, ids=[m for _, m in BAD])
def test_bad_objects_are_reported_with_their_field_and_others_survive(obj, message):
    good = {"kind": "Service", "metadata": {"name": "good"}, "spec": {"clusterIP": "10.96.0.2", "ports": [{"port": 80}]}}
    cluster = parse_objects([obj, good])
    assert len(cluster.errors) == 1 and message in cluster.errors[0], cluster.errors
    assert "default/good" in cluster.services


def test_fqdn_slices_are_ignored():
    cluster = parse_objects([{"kind": "EndpointSlice", "metadata": {"name": "e", "labels": {"kubernetes.io/service-name": "s"}},
                              "addressType": "FQDN", "endpoints": [{"addresses": ["example.com"]}]}])
    assert cluster.errors == [] and cluster.slices == {}


def test_kube_proxy_configuration():
    config = parse_config(yaml.safe_load("""
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: 10.244.0.0/16,fd00:244::/56
detectLocalMode: ClusterCIDR
nodePortAddresses: [172.18.0.0/24, primary]
iptables: {masqueradeBit: 15, masqueradeAll: true, localhostNodePorts: false, minSyncPeriod: 500ms, syncPeriod: 1m}
conntrack: {udpTimeout: 30s, maxPerCore: 32768}
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 127.0.0.1:10249
hostnameOverride: node-1
featureGates: {Foo: true}
"""))
    assert [str(c) for c in config.cluster_cidrs] == ["10.244.0.0/16", "fd00:244::/56"]
    assert (config.masquerade_mark, config.masquerade_all, config.localhost_node_ports) == ("0x8000", True, False)
    assert (config.min_sync_period, config.sync_period, config.conntrack_udp_timeout) == (0.5, 60.0, 30.0)
    assert config.node_port_addresses == ("172.18.0.0/24", "primary") and config.hostname_override == "node-1"
    assert config.warnings == ("featureGates.Foo: not a gate that changes pyproxy, ignored",)


@pytest.mark.parametrize("raw, message", [
    ({"mode": "userspace"}, "mode: must be one of iptables, nftables, ipvs"),
    ({"clusterCIDR": "10.0.0.0/40"}, "clusterCIDR[0]"),
    ({"detectLocalMode": "BridgeInterface"}, "detectLocal.bridgeInterface: required"),
    ({"nodePortAddresses": ["bogus"]}, "nodePortAddresses[0]"),
    ({"iptables": {"masqueradeAll": "yes"}}, "iptables.masqueradeAll: expected true or false"),
    ({"iptables": {"syncPeriod": "soon"}}, "iptables.syncPeriod: invalid duration 'soon'"),
    ({"kind": "KubeletConfiguration"}, "kind: expected KubeProxyConfiguration"),
])
def test_invalid_configuration_names_the_field(raw, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(raw)


def test_durations():
    assert parse_duration("1m30s", "x") == 90 and parse_duration("250ms", "x") == 0.25 and parse_duration(2, "x") == 2


def test_unset_endpoint_conditions_read_as_kube_proxy_reads_them():
    """endpointslicecache: ready and serving nil mean true, terminating nil false; so a
    terminating endpoint whose serving is unset is still a fallback endpoint."""
    (eps,) = parse_objects([{
        "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"namespace": "ns", "name": "a-x", "labels": {"kubernetes.io/service-name": "a"}},
        "endpoints": [{"addresses": ["10.244.1.5"]},
                      {"addresses": ["10.244.1.6"], "conditions": {"ready": False, "terminating": True}}],
        "ports": [{"port": 8080}]}]).slices.values()
    plain, terminating = eps.endpoints
    assert (plain.ready, plain.serving, plain.terminating) == (True, True, False)
    assert (terminating.ready, terminating.serving, terminating.terminating) == (False, True, True)


def test_a_node_is_leaving_when_deleted_or_tainted_by_the_autoscaler():
    def parsed(**node):
        return next(iter(parse_objects([{"kind": "Node", **node}]).nodes.values()))
    assert not parsed(metadata={"name": "n1"}, spec={"taints": [{"key": "node.kubernetes.io/unschedulable"}]}).deleting
    assert parsed(metadata={"name": "n1"}, spec={"taints": [{"key": "ToBeDeletedByClusterAutoscaler"}]}).deleting
    assert parsed(metadata={"name": "n1", "deletionTimestamp": "2026-12-02T10:00:00Z"}).deleting

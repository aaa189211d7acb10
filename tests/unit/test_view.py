"""The Kubernetes semantics pyproxy/view.py decides once for iptables, nftables and IPVS, checked on
the view values themselves, so one table covers every backend.

Every expectation is kube-proxy's (pkg/proxy/topology.go CategorizeEndpoints and
topologyModeFromHints, serviceport.go UsesClusterEndpoints/UsesLocalEndpoints, the decisions at
the top of iptables/proxier.go's per-service loop, util/nodeport_addresses.go, the local traffic
detectors of cmd/kube-proxy). A row where pyproxy disagrees keeps kube-proxy's expectation and is
a strict xfail naming the difference.
"""

import itertools
from ipaddress import ip_address, ip_network

import pytest

from pyproxy.config import parse_config
from pyproxy.model.parse import Cluster
from pyproxy.model.types import Endpoint, EndpointPort, EndpointSlice, Node, Service, ServicePort
from pyproxy.view import LocalTraffic, ViewBuilder, build_view, local_traffic, node_port_ips

PROXY_NAME = "service.kubernetes.io/service-proxy-name"
_slice_numbers = itertools.count()


def _ips(values):
    return tuple(ip_address(v) for v in values)


def svc(name="web", *, ips=("10.96.0.10",), node_port=0, **spec):
    """Service ns/<name> with one port "http" 80/TCP; addresses and labels given as plain values."""
    convert = {"external_ips": _ips, "load_balancer_ips": _ips,
               "load_balancer_source_ranges": lambda v: tuple(ip_network(c) for c in v),
               "labels": lambda d: tuple(sorted(d.items()))}
    spec = {k: convert.get(k, lambda v: v)(v) for k, v in spec.items()}
    return Service("ns", name, cluster_ips=_ips(ips), ports=(ServicePort("http", "TCP", 80, node_port),), **spec)


# endpoint states as the EndpointSlice conditions (ready, serving, terminating) kube-proxy reads
STATES = {"ready": (True, True, False), "serving-terminating": (False, True, True),
          "terminating": (False, False, True), "not-ready": (False, False, False)}


def _endpoint(ip, node="", state="ready", zones="", nodes=""):
    ready, serving, terminating = STATES[state]
    return Endpoint(_ips([ip]), ready, serving, terminating, node_name=node,
                    hint_zones=tuple(zones.split()), hint_nodes=tuple(nodes.split()))


def eps(*endpoints, service="web", family="IPv4", port_name="http"):
    """One EndpointSlice; each endpoint a tuple (ip, node, state="ready", zone hints="", node hints="")."""
    return EndpointSlice("ns", f"{service}-{next(_slice_numbers)}", service, family,
                         tuple(_endpoint(*e) for e in endpoints), (EndpointPort(port_name, "TCP", 8080),))


def node(name="node-a", zone="", *, addresses=(), pod_cidrs=(), deleting=False):
    return Node(name, _ips(addresses), tuple(ip_network(c) for c in pod_cidrs),
                (("topology.kubernetes.io/zone", zone),) if zone else (), deleting)


def cluster(*objs):
    c = Cluster()
    for obj in objs:
        c.add(obj)
    return c


NODE_A = node("node-a", "zone-a")  # this node (rows use it unless they say otherwise)
NP = {"type": "NodePort", "node_port": 30080}
LB = {"type": "LoadBalancer", "node_port": 30080, "load_balancer_ips": ("192.0.2.10",)}
A, A2, B, C = ("10.244.1.2", "node-a"), ("10.244.1.3", "node-a"), ("10.244.2.2", "node-b"), ("10.244.3.2", "node-c")

FLAGS = ("has_endpoints", "uses_cluster_chain", "uses_local_chain", "uses_external_chain", "uses_firewall",
         "has_internal_endpoints", "has_external_endpoints", "externally_accessible")
# the usual flag sets: every flag not named must be False
OK = "has_endpoints uses_cluster_chain has_internal_endpoints has_external_endpoints"
EXT_OK = OK + " uses_external_chain externally_accessible"
EXT_LOCAL_OK = EXT_OK + " uses_local_chain"
NOTHING = ""


def want(cluster_eps, local_eps, reachable, flags):
    return {"cluster": cluster_eps, "local": local_eps, "reachable": reachable, "flags": flags}


def row(id, objs, expected, *, nodes=(NODE_A,), node_name="node-a", proxy="", family=None, ports=1,
        deleting=False, bug=""):
    """expected None: the service gets no port at all (ports=0)."""
    marks = [pytest.mark.xfail(reason=bug, strict=True)] if bug else []
    return pytest.param((*objs, *nodes), node_name, proxy, family, ports, deleting, expected, id=id, marks=marks)


HINTED = {"topology_mode": "auto"}

VIEW_CASES = [
    # --- which endpoints: ready, terminating fallback
    row("ready endpoints anywhere in the cluster are the cluster endpoints",
        [svc(), eps(A, B)], want("10.244.1.2 10.244.2.2", "", "10.244.1.2 10.244.2.2", OK)),
    row("not-ready endpoints are never used",
        [svc(), eps(A, (*B, "not-ready"))], want("10.244.1.2", "", "10.244.1.2", OK)),
    row("serving-terminating endpoints are ignored while a ready endpoint exists",
        [svc(), eps((*A, "serving-terminating"), B)], want("10.244.2.2", "", "10.244.2.2", OK)),
    row("with no ready endpoint anywhere the serving-terminating ones are the fallback",
        [svc(), eps((*A, "serving-terminating"), (*B, "serving-terminating"), (*C, "not-ready"))],
        want("10.244.1.2 10.244.2.2", "", "10.244.1.2 10.244.2.2", OK)),
    row("terminating endpoints that no longer serve are never used, not even as a fallback",
        [svc(), eps((*A, "terminating"), (*B, "not-ready"))], want("", "", "", NOTHING)),
    row("a service without endpoints still gets its port, with has_endpoints false (REJECT)",
        [svc()], want("", "", "", NOTHING)),
    row("a slice whose port name is not the service port's gives no endpoints",
        [svc(), eps(A, port_name="metrics")], want("", "", "", NOTHING)),
    row("an endpoint listed in two slices counts once",
        [svc(), eps(A), eps(A, B)], want("10.244.1.2 10.244.2.2", "", "10.244.1.2 10.244.2.2", OK)),
    row("a slice of another service is not this service's",
        [svc(), eps(A, service="other")], want("", "", "", NOTHING)),

    # --- internalTrafficPolicy Local
    row("internalTrafficPolicy Local: only this node's ready endpoints",
        [svc(internal_traffic_policy="Local"), eps(A, B)],
        want("", "10.244.1.2", "10.244.1.2", "has_endpoints uses_local_chain has_internal_endpoints has_external_endpoints")),
    row("internalTrafficPolicy Local without a local endpoint: has_internal_endpoints false (DROP), endpoints elsewhere",
        [svc(internal_traffic_policy="Local"), eps(B)], want("", "", "", "has_endpoints has_external_endpoints")),
    row("internalTrafficPolicy Local falls back to this node's serving-terminating endpoint, not to remote ready ones",
        [svc(internal_traffic_policy="Local"), eps((*A, "serving-terminating"), B)],
        want("", "10.244.1.2", "10.244.1.2", "has_endpoints uses_local_chain has_internal_endpoints has_external_endpoints")),
    row("internalTrafficPolicy Local never uses this node's ready and terminating endpoints together",
        [svc(internal_traffic_policy="Local"), eps(A, (*A2, "serving-terminating"))],
        want("", "10.244.1.2", "10.244.1.2", "has_endpoints uses_local_chain has_internal_endpoints has_external_endpoints")),
    row("internalTrafficPolicy Local with only remote serving-terminating endpoints: has_endpoints, nothing local",
        [svc(internal_traffic_policy="Local"), eps((*B, "serving-terminating"))],
        want("", "", "", "has_endpoints has_external_endpoints")),
    row("internalTrafficPolicy Local with only a not-serving terminating local endpoint: no endpoints at all",
        [svc(internal_traffic_policy="Local"), eps((*A, "terminating"))], want("", "", "", NOTHING)),
    row("locality comes from the node name, even before the Node object is known",
        [svc(internal_traffic_policy="Local"), eps(A, B)], nodes=(),
        expected=want("", "10.244.1.2", "10.244.1.2",
                      "has_endpoints uses_local_chain has_internal_endpoints has_external_endpoints")),
    row("internalTrafficPolicy Local on a NodePort: the cluster endpoints are kept for node-port traffic",
        [svc(internal_traffic_policy="Local", **NP), eps(A, B)],
        want("10.244.1.2 10.244.2.2", "10.244.1.2", "10.244.1.2 10.244.2.2", EXT_LOCAL_OK)),

    # --- externalTrafficPolicy Local
    row("externalTrafficPolicy Local on a NodePort: a local chain, an external chain, cluster endpoints for pods",
        [svc(external_traffic_policy="Local", **NP), eps(A, B)],
        want("10.244.1.2 10.244.2.2", "10.244.1.2", "10.244.1.2 10.244.2.2", EXT_LOCAL_OK)),
    row("externalTrafficPolicy Local on a LoadBalancer with no endpoint here: no external endpoints, pods short-circuit",
        [svc(external_traffic_policy="Local", **LB), eps(B)],
        want("10.244.2.2", "", "10.244.2.2",
             "has_endpoints uses_cluster_chain uses_external_chain has_internal_endpoints externally_accessible")),
    row("externalTrafficPolicy Local: this node's serving-terminating endpoint serves external traffic, remote ready ones the rest",
        [svc(external_traffic_policy="Local", **NP), eps((*A, "serving-terminating"), B)],
        want("10.244.2.2", "10.244.1.2", "10.244.1.2 10.244.2.2", EXT_LOCAL_OK)),
    row("externalTrafficPolicy Local on a LoadBalancer without endpoints: no external chain",
        [svc(external_traffic_policy="Local", **LB)], want("", "", "", "externally_accessible")),
    row("externalTrafficPolicy Local without a node port, external or LB IP: not external, no local endpoints",
        [svc(type="LoadBalancer", external_traffic_policy="Local"), eps(A, B)],
        want("10.244.1.2 10.244.2.2", "", "10.244.1.2 10.244.2.2", "has_endpoints uses_cluster_chain has_internal_endpoints")),
    row("both policies Local on a NodePort: cluster endpoints still kept for the pod short-circuit",
        [svc(external_traffic_policy="Local", internal_traffic_policy="Local", **NP), eps(B)],
        want("10.244.2.2", "", "10.244.2.2", "has_endpoints uses_cluster_chain uses_external_chain externally_accessible")),
    row("externalIPs make a ClusterIP service externally accessible",
        [svc(external_ips=("172.18.100.5",)), eps(A)], want("10.244.1.2", "", "10.244.1.2", EXT_OK)),

    # --- topology (hints, trafficDistribution)
    row("topology hints: only the endpoints hinted for this node's zone",
        [svc(**HINTED), eps((*A, "ready", "zone-a"), (*B, "ready", "zone-b"), (*C, "ready", "zone-a"))],
        want("10.244.1.2 10.244.3.2", "", "10.244.1.2 10.244.3.2", OK)),
    row("trafficDistribution PreferClose uses the zone hints the same way",
        [svc(traffic_distribution="PreferClose"), eps((*A, "ready", "zone-a"), (*B, "ready", "zone-b"))],
        want("10.244.1.2", "", "10.244.1.2", OK)),
    row("a ready endpoint without a zone hint: hints ignored, every ready endpoint",
        [svc(**HINTED), eps((*A, "ready", "zone-a"), B)], want("10.244.1.2 10.244.2.2", "", "10.244.1.2 10.244.2.2", OK)),
    row("a hint missing only on a not-ready endpoint does not disable the hints",
        [svc(**HINTED), eps((*A, "ready", "zone-a"), (*B, "ready", "zone-b"), ("10.244.2.3", "node-b", "not-ready"))],
        want("10.244.1.2", "", "10.244.1.2", OK)),
    row("no ready endpoint hinted for this node's zone: hints ignored",
        [svc(**HINTED), eps((*B, "ready", "zone-b"), (*C, "ready", "zone-c"))],
        want("10.244.2.2 10.244.3.2", "", "10.244.2.2 10.244.3.2", OK)),
    row("a node without a zone label: hints ignored",
        [svc(**HINTED), eps((*A, "ready", "zone-a"), (*B, "ready", "zone-b"))], nodes=(node("node-a"),),
        expected=want("10.244.1.2 10.244.2.2", "", "10.244.1.2 10.244.2.2", OK)),
    row("the zone's only endpoint is terminating: hints ignored, the ready ones elsewhere used",
        [svc(**HINTED), eps((*A, "serving-terminating", "zone-a"), (*B, "ready", "zone-b"))],
        want("10.244.2.2", "", "10.244.2.2", OK)),
    row("no ready endpoint: the serving-terminating fallback ignores the hints",
        [svc(**HINTED), eps((*A, "serving-terminating", "zone-a"), (*B, "serving-terminating", "zone-b"))],
        want("10.244.1.2 10.244.2.2", "", "10.244.1.2 10.244.2.2", OK)),
    row("trafficDistribution PreferSameNode: the endpoints hinted for this node",
        [svc(traffic_distribution="PreferSameNode"),
         eps((*A, "ready", "zone-a", "node-a"), (*B, "ready", "zone-b", "node-b"), (*C, "ready", "zone-a", "node-c"))],
        want("10.244.1.2", "", "10.244.1.2", OK)),
    row("PreferSameNode with no endpoint for this node falls back to the zone hints",
        [svc(traffic_distribution="PreferSameNode"),
         eps((*B, "ready", "zone-b", "node-b"), (*C, "ready", "zone-a", "node-c"))],
        want("10.244.3.2", "", "10.244.3.2", OK)),
    row("topology with externalTrafficPolicy Local: reachable is the zone's endpoints plus this node's",
        [svc(external_traffic_policy="Local", **HINTED, **NP), eps((*A, "ready", "zone-b"), (*B, "ready", "zone-a"))],
        want("10.244.2.2", "10.244.1.2", "10.244.1.2 10.244.2.2", EXT_LOCAL_OK)),
    row("topology hints are used even when the service names no topology mode or trafficDistribution",
        [svc(), eps((*A, "ready", "zone-a"), (*B, "ready", "zone-b"))], want("10.244.1.2", "", "10.244.1.2", OK)),
    row("node hints for this node are used before the Node object is known",
        [svc(traffic_distribution="PreferSameNode"), eps((*A, "ready", "", "node-a"), (*B, "ready", "", "node-b"))],
        nodes=(), expected=want("10.244.1.2", "", "10.244.1.2", OK)),

    # --- which services are proxied
    row("a service labelled for another proxy gets no ports",
        [svc(labels={PROXY_NAME: "other"}), eps(A)], None, ports=0),
    row("an empty service-proxy-name label still claims the service (kube-proxy selects on its absence)",
        [svc(labels={PROXY_NAME: ""}), eps(A)], None, ports=0),
    row("a proxy name given to the ViewBuilder serves the services labelled with it",
        [svc(labels={PROXY_NAME: "mine"}), eps(A)], want("10.244.1.2", "", "10.244.1.2", OK), proxy="mine"),
    row("a named proxy leaves the services labelled for another proxy",
        [svc(labels={PROXY_NAME: "other"}), eps(A)], None, proxy="mine", ports=0),
    row("a named proxy leaves unlabelled services to the default proxy",
        [svc(), eps(A)], None, proxy="mine", ports=0),
    row("a headless service gets no ports",
        [svc(ips=(), headless=True), eps(A)], None, ports=0),
    row("an ExternalName service gets no ports, even with a cluster IP recorded",
        [svc(type="ExternalName", external_name="db.example.com"), eps(A)], None, ports=0),

    # --- loadBalancerSourceRanges
    row("loadBalancerSourceRanges with an LB IP and endpoints: firewall",
        [svc(load_balancer_source_ranges=("203.0.113.0/24",), **LB), eps(A)],
        want("10.244.1.2", "", "10.244.1.2", EXT_OK + " uses_firewall")),
    row("loadBalancerSourceRanges before the LB has an IP: no firewall",
        [svc(type="LoadBalancer", node_port=30080, load_balancer_source_ranges=("203.0.113.0/24",)), eps(A)],
        want("10.244.1.2", "", "10.244.1.2", EXT_OK)),
    row("loadBalancerSourceRanges without endpoints: no firewall (REJECT instead)",
        [svc(load_balancer_source_ranges=("203.0.113.0/24",), **LB)], want("", "", "", "externally_accessible")),
    row("loadBalancerSourceRanges of the other family only: no IPv4 firewall",
        [svc(load_balancer_source_ranges=("2001:db8::/64",), **LB), eps(A)],
        want("10.244.1.2", "", "10.244.1.2", EXT_OK)),

    # --- dual stack: one port view per family, each with its family's endpoints only
    row("dual-stack: the IPv4 port view has only the IPv4 endpoints",
        [svc(ips=("10.96.0.10", "fd00:96::10")), eps(A), eps(("fd00:244:1::2", "node-a"), family="IPv6")],
        want("10.244.1.2", "", "10.244.1.2", OK), family=4, ports=2),
    row("dual-stack: the IPv6 port view has only the IPv6 endpoints",
        [svc(ips=("10.96.0.10", "fd00:96::10")), eps(A), eps(("fd00:244:1::2", "node-a"), family="IPv6")],
        want("fd00:244:1::2", "", "fd00:244:1::2", OK), family=6, ports=2),
    row("dual-stack: an IPv6 external IP makes only the IPv6 port view external",
        [svc(ips=("10.96.0.10", "fd00:96::10"), external_ips=("2001:db8::5",)), eps(A)],
        want("10.244.1.2", "", "10.244.1.2", OK), family=4, ports=2),
    row("dual-stack: an IPv6 external IP makes the IPv6 port view external",
        [svc(ips=("10.96.0.10", "fd00:96::10"), external_ips=("2001:db8::5",)), eps(A),
         eps(("fd00:244:1::2", "node-a"), family="IPv6")],
        want("fd00:244:1::2", "", "fd00:244:1::2", EXT_OK), family=6, ports=2),
    row("dual-stack: an IPv6 port view without IPv6 endpoints has none, whatever IPv4 has",
        [svc(ips=("10.96.0.10", "fd00:96::10")), eps(A)], want("", "", "", NOTHING), family=6, ports=2),
    row("a single-stack IPv4 service ignores IPv6 slices",
        [svc(), eps(("fd00:244:1::2", "node-a"), family="IPv6")], want("", "", "", NOTHING), family=4),

    # --- the node
    row("a node being deleted is flagged in the view, its services still programmed",
        [svc(), eps(A)], want("10.244.1.2", "", "10.244.1.2", OK), nodes=(node("node-a", "zone-a", deleting=True),),
        deleting=True),
]


def _ips_of(endpoints):
    return sorted(str(ep.ip) for ep in endpoints)


@pytest.mark.parametrize("objs, node_name, proxy, family, ports, deleting, expected", VIEW_CASES)
def test_view(objs, node_name, proxy, family, ports, deleting, expected):
    view = ViewBuilder(node_name, proxy).build(cluster(*objs))
    assert view.deleting is deleting
    assert len(view.ports) == ports
    if expected is None:
        return
    candidates = view.family(family) if family else view.ports
    assert len(candidates) == 1
    port = candidates[0]
    assert {"cluster": _ips_of(port.cluster_endpoints), "local": _ips_of(port.local_endpoints),
            "reachable": _ips_of(port.reachable_endpoints)} == {
        k: sorted(expected[k].split()) for k in ("cluster", "local", "reachable")}
    assert {f: getattr(port, f) for f in FLAGS} == {f: f in expected["flags"].split() for f in FLAGS}


# --- nodePortAddresses: which of this node's addresses accept NodePorts
ALL = "every local address"
NODE_ADDRESSES = ("172.18.0.11", "192.0.2.1", "fd00:18::11", "2001:db8::1")
INTERFACE_ONLY = ("10.99.0.5",)  # on a second interface, not in the Node object


def nodeport_destinations(config, family):
    """What every backend accepts NodePorts on: with nodePortAddresses unset, one match-all rule
    (kube-proxy's MatchAll: `-m addrtype --dst-type LOCAL`, `fib daddr type local`); otherwise
    the addresses node_port_ips picks."""
    view = ViewBuilder("node-a").build(cluster(node("node-a", addresses=NODE_ADDRESSES)),
                                       interface_ips=_ips([*NODE_ADDRESSES, *INTERFACE_ONLY, "127.0.0.1", "::1"]))
    chosen = node_port_ips(view, config, family)
    return ALL if chosen is None else " ".join(sorted(str(ip) for ip in chosen))


NODE_PORT_CASES = [
    ("unset: every local address, IPv4", {}, 4, ALL, ""),
    ("unset: every local address, IPv6", {}, 6, ALL, ""),
    ("a CIDR: the node addresses inside it", {"nodePortAddresses": ["172.18.0.0/24"]}, 4, "172.18.0.11", ""),
    ("several CIDRs: the node addresses inside any", {"nodePortAddresses": ["172.18.0.0/24", "192.0.2.0/24"]}, 4,
     "172.18.0.11 192.0.2.1", ""),
    ("a dual-stack list: each family its own CIDRs", {"nodePortAddresses": ["172.18.0.0/24", "fd00:18::/64"]}, 6,
     "fd00:18::11", ""),
    ("a list without a CIDR of this family: every address of it", {"nodePortAddresses": ["172.18.0.0/24"]}, 6, ALL, ""),
    ("a zero CIDR: every local address, as unset", {"nodePortAddresses": ["0.0.0.0/0"]}, 4, ALL, ""),
    ("primary: the node's first IPv4 address", {"nodePortAddresses": ["primary"]}, 4, "172.18.0.11", ""),
    ("primary: the node's first IPv6 address", {"nodePortAddresses": ["primary"]}, 6, "fd00:18::11", ""),
    ("loopback in the list with localhostNodePorts true: 127.0.0.1 accepts NodePorts (iptables)",
     {"nodePortAddresses": ["127.0.0.0/8", "172.18.0.0/24"]}, 4, "127.0.0.1 172.18.0.11", ""),
    ("loopback in the list with localhostNodePorts false: 127.0.0.1 left out",
     {"nodePortAddresses": ["127.0.0.0/8", "172.18.0.0/24"], "iptables": {"localhostNodePorts": False}}, 4,
     "172.18.0.11", ""),
    ("IPv6 loopback never accepts NodePorts", {"nodePortAddresses": ["::1/128", "fd00:18::/64"]}, 6, "fd00:18::11", ""),
    ("nftables mode never accepts NodePorts on loopback",
     {"mode": "nftables", "nodePortAddresses": ["127.0.0.0/8", "172.18.0.0/24"]}, 4, "172.18.0.11", ""),
    ("CIDRs match the node's interface addresses, not only the Node object's",
     {"nodePortAddresses": ["10.99.0.0/16"]}, 4, "10.99.0.5", ""),
    ("localhost: the loopback CIDRs (iptables, localhostNodePorts)",
     {"nodePortAddresses": ["localhost", "172.18.0.0/24"]}, 4, "127.0.0.1 172.18.0.11", ""),
    ("localhost in IPv6: ::1 never accepts NodePorts", {"nodePortAddresses": ["localhost", "fd00:18::/64"]}, 6,
     "fd00:18::11", ""),
    ("localhost alone in nftables mode: no NodePort address at all",
     {"mode": "nftables", "nodePortAddresses": ["localhost"]}, 4, "", ""),
    ("all: the zero CIDRs, every local address", {"nodePortAddresses": ["all", "172.18.0.0/24"]}, 4, ALL, ""),
]


@pytest.mark.parametrize("raw, family, expected", [
    pytest.param(raw, family, expected, id=id, marks=[pytest.mark.xfail(reason=bug, strict=True)] if bug else [])
    for id, raw, family, expected, bug in NODE_PORT_CASES])
def test_node_port_addresses(raw, family, expected):
    assert nodeport_destinations(parse_config(raw), family) == expected


# --- detectLocalMode: how pod traffic is told apart
BRIDGE = {"detectLocalMode": "BridgeInterface", "detectLocal": {"bridgeInterface": "cbr0"}}
PREFIX = {"detectLocalMode": "InterfaceNamePrefix", "detectLocal": {"interfaceNamePrefix": "veth"}}
NODE_CIDR = {"detectLocalMode": "NodeCIDR", "clusterCIDR": "10.0.0.0/8"}
POD_CIDRS = ("10.244.1.0/24", "fd00:244:1::/64")

LOCAL_TRAFFIC_CASES = [
    ("ClusterCIDR: the cluster CIDR of the family", {"clusterCIDR": "10.244.0.0/16"}, (), 4,
     LocalTraffic(cidr="10.244.0.0/16")),
    ("ClusterCIDR without a CIDR of this family: no detection", {"clusterCIDR": "10.244.0.0/16"}, (), 6, None),
    ("ClusterCIDR dual-stack: the IPv6 CIDR for IPv6", {"clusterCIDR": "10.244.0.0/16,fd00:244::/56"}, (), 6,
     LocalTraffic(cidr="fd00:244::/56")),
    ("ClusterCIDR unset: no detection", {}, POD_CIDRS, 4, None),
    ("NodeCIDR: this node's IPv4 pod CIDR, not the cluster CIDR", NODE_CIDR, POD_CIDRS, 4,
     LocalTraffic(cidr="10.244.1.0/24")),
    ("NodeCIDR: this node's IPv6 pod CIDR", NODE_CIDR, POD_CIDRS, 6, LocalTraffic(cidr="fd00:244:1::/64")),
    ("NodeCIDR on a node without pod CIDRs: no detection", NODE_CIDR, (), 4, None),
    ("BridgeInterface: arriving on the bridge, IPv4", BRIDGE, (), 4, LocalTraffic(interface="cbr0")),
    ("BridgeInterface: arriving on the bridge, IPv6", BRIDGE, (), 6, LocalTraffic(interface="cbr0")),
    ("InterfaceNamePrefix: arriving on any interface named so", PREFIX, (), 6,
     LocalTraffic(interface="veth", prefix=True)),
]


@pytest.mark.parametrize("raw, pod_cidrs, family, expected",
                         [pytest.param(*c[1:], id=c[0]) for c in LOCAL_TRAFFIC_CASES])
def test_local_traffic(raw, pod_cidrs, family, expected):
    view = build_view(cluster(node("node-a", pod_cidrs=pod_cidrs)), "node-a")
    assert local_traffic(parse_config(raw), view, family) == expected


@pytest.mark.parametrize("objs, verdict", [
    pytest.param([svc()], "reject", id="no endpoints anywhere: refused, the client learns at once"),
    pytest.param([svc(external_traffic_policy="Local", **NP), eps(B)], "drop",
                 id="eTP=Local with endpoints only elsewhere: dropped here, the client may retry another node"),
    pytest.param([svc(internal_traffic_policy="Local"), eps(B)], "drop",
                 id="iTP=Local with endpoints only elsewhere: dropped"),
])
def test_no_endpoint_verdict(objs, verdict):
    (sp,) = build_view(cluster(NODE_A, *objs), "node-a").ports
    assert sp.no_endpoint_verdict == verdict


CIP, EXT_IP, LB_IP = "10.96.0.10", "203.0.113.7", "192.0.2.10"
RANGES = {"load_balancer_source_ranges": ("198.51.100.0/24",)}


@pytest.mark.parametrize("objs, expected", [
    pytest.param([svc(), eps(A, B)], [("cluster IP", CIP, 80, "cluster endpoints", "")],
                 id="a ClusterIP service: its cluster IP to the cluster endpoints"),
    pytest.param([svc()], [("cluster IP", CIP, 80, "", "reject")],
                 id="no endpoint anywhere: the cluster IP rejects"),
    pytest.param([svc(internal_traffic_policy="Local"), eps(A, B)], [("cluster IP", CIP, 80, "local endpoints", "")],
                 id="iTP=Local: the cluster IP to this node's endpoints"),
    pytest.param([svc(internal_traffic_policy="Local"), eps(B)], [("cluster IP", CIP, 80, "", "drop")],
                 id="iTP=Local with endpoints only elsewhere: the cluster IP drops"),
    pytest.param([svc(external_ips=(EXT_IP,), **NP), eps(A, B)],
                 [("cluster IP", CIP, 80, "cluster endpoints", ""), ("external IP", EXT_IP, 80, "external path", ""),
                  ("node port", None, 30080, "external path", "")],
                 id="external IPs and the node port take the external path, after the cluster IP"),
    pytest.param([svc(external_traffic_policy="Local", external_ips=(EXT_IP,), **NP), eps(B)],
                 [("cluster IP", CIP, 80, "cluster endpoints", ""), ("external IP", EXT_IP, 80, "external path", "drop"),
                  ("node port", None, 30080, "external path", "drop")],
                 id="eTP=Local without local endpoints: external traffic dropped, pods still short-circuit"),
    pytest.param([svc(**LB), eps(A)],
                 [("cluster IP", CIP, 80, "cluster endpoints", ""), ("load-balancer IP", LB_IP, 80, "external path", ""),
                  ("node port", None, 30080, "external path", "")],
                 id="a LoadBalancer's IP takes the external path"),
    pytest.param([svc(**LB, **RANGES), eps(A)],
                 [("cluster IP", CIP, 80, "cluster endpoints", ""), ("load-balancer IP", LB_IP, 80, "firewall", ""),
                  ("node port", None, 30080, "external path", "")],
                 id="loadBalancerSourceRanges: the load-balancer IP goes through the firewall first"),
    pytest.param([svc(**LB, **RANGES)],
                 [("cluster IP", CIP, 80, "", "reject"), ("load-balancer IP", LB_IP, 80, "", "reject"),
                  ("node port", None, 30080, "", "reject")],
                 id="no endpoints: every frontend rejects, no firewall"),
])
def test_frontends(objs, expected):
    (sp,) = build_view(cluster(NODE_A, *objs), "node-a").ports
    assert [(fe.kind, str(fe.address) if fe.address else None, fe.port, fe.route, fe.verdict)
            for fe in sp.frontends] == expected

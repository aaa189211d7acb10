"""Which reply sources a change can have made stale (pyproxy.conntrack.suspect_addresses): the
cleaner asks the kernel only for flows answered from these after a partial sync."""

from pyproxy.conntrack import suspect_addresses
from pyproxy.model import parse_objects
from pyproxy.view import build_view


def udp_ports(endpoints, node_port=0, name="dns", cluster_ip="10.96.0.10"):
    port = {"port": 53, "protocol": "UDP", **({"nodePort": node_port} if node_port else {})}
    view = build_view(parse_objects([
        {"kind": "Service", "metadata": {"namespace": "ns", "name": name},
         "spec": {"clusterIP": cluster_ip, "ports": [port], **({"type": "NodePort"} if node_port else {})}},
        {"kind": "EndpointSlice", "addressType": "IPv4",
         "metadata": {"namespace": "ns", "name": f"{name}-a", "labels": {"kubernetes.io/service-name": name}},
         "endpoints": [{"addresses": [ip]} for ip in endpoints], "ports": [{"name": "", "port": 53, "protocol": "UDP"}]},
    ]), "n1")
    return {sp.key: sp for sp in view.family(4)}


NODE_IPS = ["172.18.0.11"]


def test_an_endpoint_that_went_is_the_only_suspect():
    old, new = udp_ports(["10.244.1.2", "10.244.1.3"]), udp_ports(["10.244.1.2"])
    assert suspect_addresses(old, new, NODE_IPS) == {"10.244.1.3"}


def test_an_endpoint_that_came_makes_nothing_stale():
    old, new = udp_ports(["10.244.1.2"]), udp_ports(["10.244.1.2", "10.244.1.3"])
    assert suspect_addresses(old, new, NODE_IPS) == set()


def test_endpoints_after_none_make_the_frontends_suspect_and_a_node_port_the_node():
    assert suspect_addresses(udp_ports([]), udp_ports(["10.244.1.2"]), NODE_IPS) == {"10.96.0.10"}
    old, new = udp_ports([], node_port=30053), udp_ports(["10.244.1.2"], node_port=30053)
    assert suspect_addresses(old, new, NODE_IPS) == {"10.96.0.10", "172.18.0.11"}


def test_a_service_that_went_makes_its_endpoints_suspect_and_a_new_one_its_frontend():
    gone = udp_ports(["10.244.1.2"])
    assert suspect_addresses(gone, {}, NODE_IPS) == {"10.244.1.2"}
    assert suspect_addresses({}, udp_ports(["10.244.1.5"], name="new", cluster_ip="10.96.0.20"), NODE_IPS) == {
        "10.96.0.20"}


def test_nothing_changed_nothing_suspect():
    ports = udp_ports(["10.244.1.2"])
    assert suspect_addresses(ports, dict(ports), NODE_IPS) == set()

"""nftables render and partial-sync scripts (pure: `nft` itself is not called here; the lab suite
in tests/netns runs the same backend against the kernel)."""

import pytest

from pyproxy.config import ProxyConfig
from pyproxy.model import parse_objects
from pyproxy.nftables.apply import NftablesBackend
from pyproxy.nftables.render import SHARD_OWNERS, NftRenderer, element_lines
from pyproxy.view import build_view
from tests.factories import endpoint_slice, node, service


class Recorder(NftablesBackend):
    def __init__(self):
        super().__init__(4)
        self.scripts = []

    def run(self, script):
        self.scripts.append(script)

    def send_elements(self, gone, added):  # what the nfnetlink batch carries, as nft would say it
        lines = [line for c in sorted(gone) for line in element_lines("delete", "ip", "kube-proxy", c, gone[c])]
        lines += [line for c in sorted(added) for line in element_lines("add", "ip", "kube-proxy", c, added[c])]
        self.scripts.append("\n".join(lines) + "\n")
        return 0


def sync(backend, renderer, objs, full=False):
    backend.sync(renderer.render(build_view(parse_objects(objs), "n1"), 4), full)
    return backend.scripts[-1]


def test_one_map_element_per_endpoint_and_one_dnat_rule_per_service():
    renderer = NftRenderer(ProxyConfig(mode="nftables"))
    objs = [service("a", "10.96.0.1"), endpoint_slice("a", [f"10.244.1.{i}" for i in range(2, 12)])]
    script = renderer.render(build_view(parse_objects(objs), "n1"), 4).script()
    assert script.count("dnat ip to numgen random mod 10 offset 0 map @endpoints-tcp-0") == 1
    assert "chain endpoint-" not in script, "no chain per endpoint"
    elements = script.split("add element ip kube-proxy endpoints-tcp-0 { ", 1)[1].split(" }", 1)[0]
    assert sorted(e.split(" : ")[1] for e in elements.split(", ")) == sorted(f"10.244.1.{i} . 8080" for i in range(2, 12))
    assert sorted(int(e.split(" : ")[0]) for e in elements.split(", ")) == list(range(10))


def test_endpoint_maps_are_sharded_so_few_rules_use_each():
    """The kernel checks each element added to a map against every rule using that map: no map may
    be used by more than SHARD_OWNERS service chains, and a new shard arrives in a partial sync."""
    renderer, backend = NftRenderer(ProxyConfig(mode="nftables")), Recorder()
    objs = []
    for i in range(SHARD_OWNERS + 1):
        objs += [service(f"s{i}", f"10.96.1.{i}"), endpoint_slice(f"s{i}", [f"10.244.2.{i}"])]
    script = sync(backend, renderer, objs[:-2], full=True)
    users = [line.rsplit("@", 1)[1] for line in script.splitlines() if "dnat ip to numgen" in line]
    assert users.count("endpoints-tcp-0") == SHARD_OWNERS and len(users) == SHARD_OWNERS
    grown = sync(backend, renderer, objs)
    assert grown.startswith("add map ip kube-proxy endpoints-tcp-1 { typeof numgen random mod 1 : ip daddr . tcp dport; }")
    assert "map @endpoints-tcp-1" in grown and "add element ip kube-proxy endpoints-tcp-1 { 0 : 10.244.2.64 . 8080 }" in grown
    # a removed service frees its block for the next one, in the same shard
    objs[0:2] = []
    sync(backend, renderer, objs)
    objs += [service("late", "10.96.3.1"), endpoint_slice("late", ["10.244.3.1"]),
             service("later", "10.96.3.2"), endpoint_slice("later", ["10.244.3.2"])]
    reused = sync(backend, renderer, objs)
    assert "add map" not in reused and "10.244.3.1 . 8080" in reused and "10.244.3.2 . 8080" in reused
    assert "endpoints-tcp-0 { 0 : 10.244.3." in reused, "the freed block in shard 0 is used again"


def test_partial_sync_changes_only_elements_and_keeps_shared_ones():
    renderer, backend = NftRenderer(ProxyConfig(mode="nftables")), Recorder()
    both = [service("a", "10.96.0.1"), endpoint_slice("a", ["10.244.1.2"]),
            service("b", "10.96.0.2"), endpoint_slice("b", ["10.244.1.2"])]
    assert "add table ip kube-proxy" in sync(backend, renderer, both, full=True)
    script = sync(backend, renderer, [service("b", "10.96.0.2"), endpoint_slice("b", ["10.244.1.2"])])
    assert "delete element ip kube-proxy service-ips { 10.96.0.1 . tcp . 80 }" in script
    assert "hairpin" not in script, "the pod is still an endpoint of b: its hairpin pair stays"
    assert "delete chain ip kube-proxy service-" in script and "table" not in script.split("\n")[0]
    moved = sync(backend, renderer, [service("b", "10.96.0.2"), endpoint_slice("b", ["10.244.1.3"])])
    assert "add chain" not in moved, "an endpoint that moved is a map element, not a new chain"
    assert "add element ip kube-proxy endpoints-tcp-0 { 4 : 10.244.1.3 . 8080 }" in moved or \
           "endpoints-tcp-0 {" in moved and "10.244.1.3 . 8080" in moved
    assert "delete element ip kube-proxy hairpin { 10.244.1.2 . 10.244.1.2 }" in moved


def test_node_port_addresses_fill_the_nodeport_ips_set_and_a_change_reloads_the_table():
    from pyproxy.config import parse_config

    config = parse_config({"mode": "nftables", "nodePortAddresses": ["172.18.0.0/24"]})
    renderer, backend = NftRenderer(config), Recorder()
    objs = [service("np", "10.96.0.1", type="NodePort"), endpoint_slice("np", ["10.244.1.2"])]
    backend.sync(renderer.render(build_view(parse_objects([*objs, node("n1", "172.18.0.11", "192.0.2.1")]), "n1"), 4), True)
    script = backend.scripts[-1]
    assert "set nodeport-ips { type ipv4_addr; elements = { 172.18.0.11 }; }" in script
    assert "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports" in script
    backend.sync(renderer.render(build_view(parse_objects([*objs, node("n1", "172.18.0.12")]), "n1"), 4))
    assert backend.scripts[-1].startswith("add table ip kube-proxy"), "a new node address reloads the whole table"
    assert "elements = { 172.18.0.12 }" in backend.scripts[-1]


def test_the_table_name_is_configurable_and_every_write_names_it():
    from pyproxy.config import ConfigError, parse_config

    config = parse_config({"mode": "nftables", "pyproxy": {"nftablesTable": "pyproxy-lab"}})
    renderer = NftRenderer(config, config.nftables_table)
    backend = Recorder()
    backend.table = config.nftables_table
    objs = [service("a", "10.96.0.1"), endpoint_slice("a", ["10.244.1.2"])]
    backend.sync(renderer.render(build_view(parse_objects(objs), "n1"), 4), True)
    assert backend.scripts[-1].startswith("add table ip pyproxy-lab\ndelete table ip pyproxy-lab\ntable ip pyproxy-lab {")
    assert "ip kube-proxy" not in backend.scripts[-1] and "add element ip pyproxy-lab service-ips" in backend.scripts[-1]
    with pytest.raises(ConfigError, match="pyproxy.nftablesTable"):
        parse_config({"pyproxy": {"nftablesTable": "bad name"}})


def service_cidr(name, *cidrs):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": name},
            "spec": {"cidrs": list(cidrs)}}


def test_unallocated_cluster_ips_are_dropped_as_kube_proxy_nftables_drops_them():
    """kube-proxy's nftables mode (1.37): an address of a ServiceCIDR that no Service holds is
    dropped (a held address on a port it does not serve is rejected); a new range reloads the
    table; without ServiceCIDRs there is no drop rule."""
    renderer, backend = NftRenderer(ProxyConfig(mode="nftables")), Recorder()
    objs = [service("web", "10.96.0.1"), endpoint_slice("web", ["10.244.1.2"])]
    plain = sync(backend, renderer, objs, full=True)
    assert "Drop traffic to unallocated ClusterIPs" not in plain
    script = sync(backend, renderer, [*objs, service_cidr("kubernetes", "10.96.0.0/16", "fd00:10:96::/112"),
                                      service_cidr("extra", "10.100.0.0/24")])
    assert ('ip daddr { 10.96.0.0/16, 10.100.0.0/24 } drop comment "Drop traffic to unallocated ClusterIPs"; '
            in script), "both ranges of the family, sorted; the IPv6 one is the IPv6 table's"
    assert script.startswith("add table ip kube-proxy"), "a new range reloads the table"
    assert parse_objects([service_cidr("bad", "10.96.0.0/33")]).errors == [
        "ServiceCIDR bad: spec.cidrs[0]: invalid CIDR '10.96.0.0/33'"]

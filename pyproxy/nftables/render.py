"""NodeView -> an nftables ruleset (one table per family), from the same view as iptables.

Invariant: render never reads the kernel. The layout starts from kube-proxy's nftables mode
(table `kube-proxy`, base chains at its hooks and priorities, verdict maps `service-ips`,
`service-nodeports`, `no-endpoint-services`, `no-endpoint-nodeports`, `firewall-ips`, set
`cluster-ips`, per-service `service-`/`local-`/`external-`/`firewall-` chains, mark-based
masquerade, REJECT for missing endpoints and unknown cluster-IP ports) and departs from it where
the kernel's load cost demands: upstream gives every endpoint a chain and every service an
anonymous verdict map, which is what makes large rulesets load for minutes. Here:

* DNAT targets live in named maps keyed by a number, `endpoints-tcp-K` (-udp-K, -sctp-K): each
  service's endpoint set owns a block of keys in one of them, and its chain ends in
  `dnat to numgen random mod N offset BASE map @endpoints-tcp-K` (one rule, whatever N). The
  maps are shards of at most SHARD_OWNERS chains: the kernel checks every element added to a map
  against every rule that uses the map, so one map for all services costs services x endpoints
  (18 s of kernel time at 10,000 services); shards keep that linear;
* hairpin (a pod reaching itself through its service) is one set, `hairpin`, of `ip . ip` pairs,
  matched in postrouting after DNAT;
* only services with ClientIP affinity get per-endpoint chains and timed sets (upstream's shape),
  since affinity must remember the endpoint chosen per client;
* the node's own connections meet `service-endpoints-check` after DNAT (filter-output-post-dnat),
  so they short-circuit to an eTP=Local service's endpoints like pods do, as in iptables mode.

Blocks are allocated by the renderer and kept while a service's endpoint count fits, so a changed
endpoint is a changed map element, not a new chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..backend import PortMemo, RenderChanges
from ..chainhash import port_proto_hash
from ..config import ProxyConfig
from ..rendertext import object_text
from ..view import (DROP, EXTERNAL, FIREWALL, NODE_PORT, REJECT, TO_CLUSTER, TO_LOCAL, LocalTraffic, NodeView,
                    ServicePortView, local_traffic, node_port_ips, source_ranges_admit_node)

TABLE = "kube-proxy"


@dataclass
class ServiceNft:
    """One service port's share: its chains, its affinity sets, its elements in the shared maps."""

    chains: dict[str, list[str]] = field(default_factory=dict)
    sets: dict[str, str] = field(default_factory=dict)  # name -> definition body
    elements: dict[str, dict[str, str]] = field(default_factory=dict)  # map/set -> key -> value ("" for sets)

    def element(self, container: str, key: str, value: str = "") -> None:
        self.elements.setdefault(container, {})[key] = value


@dataclass
class NftRuleset:
    family: int
    table: str
    static: str  # the table's fixed part: sets, maps, base and helper chains
    services: Mapping[str, ServiceNft]
    maps: dict[str, str]  # endpoint map shards: name -> definition body
    # how `services` differs from the renderer's previous ruleset's (None: compare them)
    changes: RenderChanges | None = field(default=None, compare=False)

    @property
    def nft_family(self) -> str:
        return "ip" if self.family == 4 else "ip6"

    def all_elements(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for svc in self.services.values():
            for container, items in svc.elements.items():
                out.setdefault(container, {}).update(items)
        return out

    def script(self) -> str:
        """The whole table as `nft -f` input: replaces any previous table atomically."""
        fam, table = self.nft_family, self.table
        lines = [f"add table {fam} {table}", f"delete table {fam} {table}", f"table {fam} {table} {{", self.static]
        lines += [f"\tmap {name} {{ {body} }}" for name, body in self.maps.items()]
        for svc in self.services.values():
            for name, body in svc.sets.items():
                lines.append(f"\tset {name} {{ {body} }}")
            for name, rules in svc.chains.items():
                lines.append(f"\tchain {name} {{")
                lines.extend(f"\t\t{rule}" for rule in rules)
                lines.append("\t}")
        lines.append("}")
        for container, items in self.all_elements().items():
            lines.extend(element_lines("add", fam, table, container, items))
        return "\n".join(lines) + "\n"


def element_lines(verb: str, fam: str, table: str, container: str, items: dict[str, str],
                  batch: int = 2000) -> list[str]:
    entries = [f"{k} : {v}" if v and verb == "add" else k for k, v in items.items()]
    return [f"{verb} element {fam} {table} {container} {{ {', '.join(entries[i:i + batch])} }}"
            for i in range(0, len(entries), batch)]


def static_part(config: ProxyConfig, view: NodeView, family: int) -> str:
    ip, addr = ("ip", "ipv4_addr") if family == 4 else ("ip6", "ipv6_addr")
    mark = config.masquerade_mark
    loopback = "127.0.0.0/8" if family == 4 else "::1"
    nodeport_ips = ""
    ranges = view.service_ranges_of(family)
    # kube-proxy: traffic to an address of a ServiceCIDR that no Service holds is dropped
    unallocated = (f"{ip} daddr {{ {', '.join(map(str, ranges))} }} drop "
                   'comment "Drop traffic to unallocated ClusterIPs"; ') if ranges else ""
    chosen = node_port_ips(view, config, family)
    if chosen is not None:
        nodeport_match = f"{ip} daddr @nodeport-ips"
        nodeport_ips = f" elements = {{ {', '.join(map(str, chosen))} }};" if chosen else ""
    else:
        nodeport_match = f"fib daddr type local {ip} daddr != {loopback}"
    return "\n".join([
        '\tcomment "rules for pyproxy (the layout of kube-proxy nftables mode, endpoints in sharded maps)"',
        f'\tset cluster-ips {{ type {addr}; comment "Active ClusterIPs"; }}',
        f"\tset nodeport-ips {{ type {addr};{nodeport_ips} }}",
        f"\tset hairpin {{ type {addr} . {addr}; }}",
        f"\tmap service-ips {{ type {addr} . inet_proto . inet_service : verdict; }}",
        "\tmap service-nodeports { type inet_proto . inet_service : verdict; }",
        f"\tmap no-endpoint-services {{ type {addr} . inet_proto . inet_service : verdict; }}",
        "\tmap no-endpoint-nodeports { type inet_proto . inet_service : verdict; }",
        f"\tmap firewall-ips {{ type {addr} . inet_proto . inet_service : verdict; }}",
        "\tchain canary { }",
        "\tchain filter-prerouting { type filter hook prerouting priority -110; policy accept; "
        "ct state new jump firewall-check; }",
        "\tchain filter-input { type filter hook input priority -110; policy accept; "
        "ct state new jump nodeport-endpoints-check; ct state new jump service-endpoints-check; }",
        "\tchain filter-forward { type filter hook forward priority -110; policy accept; "
        "ct state new jump service-endpoints-check; ct state new jump cluster-ips-check; }",
        "\tchain filter-output { type filter hook output priority -110; policy accept; "
        "ct state new jump firewall-check; }",
        # after DNAT (upstream checks before it, which drops the node's own connections to an
        # eTP=Local external address without local endpoints instead of short-circuiting them)
        "\tchain filter-output-post-dnat { type filter hook output priority -90; policy accept; "
        "ct state new jump service-endpoints-check; ct state new jump cluster-ips-check; }",
        "\tchain nat-prerouting { type nat hook prerouting priority -100; policy accept; jump services; }",
        "\tchain nat-output { type nat hook output priority -100; policy accept; jump services; }",
        "\tchain nat-postrouting { type nat hook postrouting priority 100; policy accept; "
        f"{ip} saddr . {ip} daddr @hairpin jump mark-for-masquerade; jump masquerading; }}",
        f"\tchain firewall-check {{ {ip} daddr . meta l4proto . th dport vmap @firewall-ips; }}",
        f"\tchain services {{ {ip} daddr . meta l4proto . th dport vmap @service-ips; "
        f"{nodeport_match} meta l4proto . th dport vmap @service-nodeports; }}",
        f"\tchain service-endpoints-check {{ {ip} daddr . meta l4proto . th dport vmap @no-endpoint-services; }}",
        "\tchain nodeport-endpoints-check { "
        f"{nodeport_match} meta l4proto . th dport vmap @no-endpoint-nodeports; }}",
        f'\tchain cluster-ips-check {{ {ip} daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"; '
        f"{unallocated}}}",
        f"\tchain masquerading {{ meta mark & {mark} == 0 return; meta mark set meta mark ^ {mark}; "
        "masquerade fully-random; }",
        f"\tchain mark-for-masquerade {{ meta mark set meta mark | {mark}; }}",
        "\tchain reject-chain { reject; }",
    ])


def chain_base(sp: ServicePortView) -> str:
    """kube-proxy's nftables chain suffix: 8 hash characters and the readable service port."""
    h = port_proto_hash(sp.name_string, sp.protocol.lower())[:8]
    return f"{h}-{object_text(f'{sp.namespace}/{sp.name}/{sp.protocol.lower()}/{sp.port_name}')}"


SHARD_OWNERS = 64  # service chains per endpoint map: kernel cost per element grows with this
SHARD_KEYS = 4096  # keys per endpoint map before a new shard (one larger block still fits alone)


class Blocks:
    """Key blocks in the endpoint map shards of one protocol. An owner (a service chain) keeps its
    block while its endpoint count fits; freed blocks are reused first-fit within their shard."""

    def __init__(self, proto: str) -> None:
        self.proto = proto
        self.owned: dict[str, tuple[int, int, int]] = {}  # owner -> (shard, base, capacity)
        self.shards: list[dict] = []  # each: owners (count), end (next free key), free [(base, cap)]
        self._maps: tuple[tuple[int, int], dict[str, str]] | None = None

    def map_name(self, shard: int) -> str:
        return f"endpoints-{self.proto}-{shard}"

    def get(self, owner: str, size: int) -> tuple[str, int]:
        """(map name, first key) of the owner's block, (re)allocated if it does not fit."""
        held = self.owned.get(owner)
        if held and size <= held[2]:
            return self.map_name(held[0]), held[1]
        self.release(owner)
        capacity = max(size, 4)
        shard, base = self._place(capacity)
        self.owned[owner] = (shard, base, capacity)
        return self.map_name(shard), base

    def _place(self, capacity: int) -> tuple[int, int]:
        for index, shard in enumerate(self.shards):
            if shard["owners"] >= SHARD_OWNERS:
                continue
            for i, (base, cap) in enumerate(shard["free"]):
                if cap >= capacity:
                    shard["free"][i:i + 1] = [(base + capacity, cap - capacity)] if cap > capacity else []
                    shard["owners"] += 1
                    return index, base
            if shard["end"] + capacity <= SHARD_KEYS or shard["end"] == 0:
                base, shard["end"] = shard["end"], shard["end"] + capacity
                shard["owners"] += 1
                return index, base
        self.shards.append({"owners": 0, "end": 0, "free": []})
        return self._place(capacity)

    def release(self, owner: str) -> None:
        held = self.owned.pop(owner, None)
        if held:
            shard = self.shards[held[0]]
            shard["owners"] -= 1
            shard["free"].append((held[1], held[2]))

    def maps(self, family: int) -> dict[str, str]:
        """The shards' map definitions (the same object while no shard is added: every render asks)."""
        if self._maps is None or self._maps[0] != (family, len(self.shards)):
            ip = "ip" if family == 4 else "ip6"
            # a map per transport protocol: nft checks a rule's `meta l4proto` against the map's key
            body = f"typeof numgen random mod 1 : {ip} daddr . {self.proto} dport;"
            self._maps = ((family, len(self.shards)), {self.map_name(i): body for i in range(len(self.shards))})
        return self._maps[1]


def render_service(sp: ServicePortView, config: ProxyConfig, view: NodeView, blocks: Blocks) -> ServiceNft:
    """`blocks` are the endpoint-map blocks of the port's protocol and family."""
    out = ServiceNft()
    fam = sp.family
    ip = "ip" if fam == 4 else "ip6"
    proto = sp.protocol.lower()
    base = chain_base(sp)
    svc_chain, local_chain, ext_chain, fw_chain = (f"service-{base}", f"local-{base}", f"external-{base}",
                                                   f"firewall-{base}")
    cip = str(sp.cluster_ip)
    port = sp.port
    uses_cluster_chain, uses_local_chain = sp.uses_cluster_chain, sp.uses_local_chain
    route_chain = {TO_CLUSTER: svc_chain, TO_LOCAL: local_chain, EXTERNAL: ext_chain, FIREWALL: ext_chain}
    internal_chain, external_policy_chain = route_chain[sp.internal_route], route_chain[sp.external_route]
    has_internal, has_external = sp.has_internal_endpoints, sp.has_external_endpoints
    uses_ext_chain, uses_fw_chain = sp.uses_external_chain, sp.uses_firewall
    verdicts = {REJECT: "goto reject-chain", DROP: "drop"}
    local = local_traffic(config, view, fam)

    out.element("cluster-ips", cip)
    for fe in sp.frontends:
        if fe.kind == NODE_PORT:
            key, routes, unusable = f"{proto} . {fe.port}", "service-nodeports", "no-endpoint-nodeports"
        else:
            key, routes, unusable = f"{fe.address} . {proto} . {fe.port}", "service-ips", "no-endpoint-services"
        if fe.route:
            out.element(routes, key, f"goto {route_chain[fe.route]}")
        if fe.route == FIREWALL:  # the firewall map is looked up first, in its own chain
            out.element("firewall-ips", key, f"goto {fw_chain}")
        if fe.verdict:
            out.element(unusable, key, verdicts[fe.verdict])

    chains = out.chains
    masq_internal = []
    if has_internal:
        match = f"{ip} daddr {cip} {proto} dport {port}"
        if config.masquerade_all:
            masq_internal = [f"{match} jump mark-for-masquerade"]
        elif local is not None:
            masq_internal = [f"{match} {_nft_match(local, ip, negate=True)} jump mark-for-masquerade"]
    if uses_ext_chain:
        rules = chains.setdefault(ext_chain, [])
        if sp.external_route == TO_CLUSTER:  # masquerade all; a Local policy keeps the client address
            rules += ["jump mark-for-masquerade", f"goto {svc_chain}"]
        else:
            if local is not None:
                rules.append(f"{_nft_match(local, ip)} goto {svc_chain}")  # pods short-circuit
            rules += ["fib saddr type local jump mark-for-masquerade", f"fib saddr type local goto {svc_chain}"]
            if has_external:
                rules.append(f"goto {external_policy_chain}")
    if uses_fw_chain:
        allowed = [str(c) for c in sp.load_balancer_source_ranges]
        if source_ranges_admit_node(sp, view.node_ips_of(fam)):
            allowed += [str(x) for x in sp.load_balancer_ips]
        chains[fw_chain] = [f"{ip} saddr != {{ {', '.join(allowed)} }} drop"]
    for chain, endpoints, uses in ((svc_chain, sp.cluster_endpoints, uses_cluster_chain),
                                   (local_chain, sp.local_endpoints, uses_local_chain)):
        if not uses:
            blocks.release(f"{sp.key}/{chain[:5]}")
            continue
        rules = list(masq_internal) if chain == internal_chain else []
        if sp.affinity_timeout:
            rules += _affinity(out, sp, chain, endpoints, ip, proto)
        else:
            shard, start = blocks.get(f"{sp.key}/{chain[:5]}", len(endpoints))
            for i, ep in enumerate(endpoints):
                out.element(shard, str(start + i), f"{ep.ip_text} . {ep.port}")
            rules.append(f"meta l4proto {proto} dnat {ip} to numgen random mod {len(endpoints)} offset {start} "
                         f"map @{shard}")
        chains[chain] = rules
    for ep in sp.reachable_endpoints:
        out.element("hairpin", f"{ep.ip_text} . {ep.ip_text}")
    return out


def _affinity(out: ServiceNft, sp: ServicePortView, chain: str, endpoints, ip: str, proto: str) -> list[str]:
    """ClientIP affinity, upstream's shape: a chain and a timed set per endpoint."""
    rules, targets = [], []
    for ep in endpoints:
        h = port_proto_hash(sp.name_string + proto + ep.label, "")[:8]
        ep_chain = f"endpoint-{h}-{chain_base(sp)}__{ep.ip_text}/{ep.port}"
        aff_set = f"affinity-{h}-{chain_base(sp)}__{ep.ip_text}/{ep.port}"
        addr = "ipv4_addr" if ip == "ip" else "ipv6_addr"
        out.sets[aff_set] = f"type {addr}; flags dynamic,timeout; timeout {sp.affinity_timeout}s;"
        out.chains[ep_chain] = [f"update @{aff_set} {{ {ip} saddr }}", f"meta l4proto {proto} dnat {ip} to {ep.label}"]
        rules.append(f"{ip} saddr @{aff_set} goto {ep_chain}")
        targets.append(ep_chain)
    vmap = ", ".join(f"{i} : goto {c}" for i, c in enumerate(targets))
    rules.append(f"numgen random mod {len(targets)} vmap {{ {vmap} }}")
    return rules


def _nft_match(local: LocalTraffic, ip: str, negate: bool = False) -> str:
    """The local-traffic detector as an nft match."""
    op = "!= " if negate else ""
    if local.cidr:
        return f"{ip} saddr {op}{local.cidr}"
    return f'iifname {op}"{local.interface}{"*" if local.prefix else ""}"'


class NftRenderer:
    """render() with a memo and the endpoint-block allocation kept across syncs."""

    def __init__(self, config: ProxyConfig, table: str = TABLE) -> None:
        self.config = config
        self.table = table
        self.blocks: dict[tuple[int, str], Blocks] = {}
        self._memo: PortMemo[ServiceNft] = PortMemo()

    def _blocks(self, family: int, proto: str) -> Blocks:
        return self.blocks.setdefault((family, proto), Blocks(proto))

    def render(self, view: NodeView, family: int) -> NftRuleset:
        context = (view.node_ips_of(family), view.pod_cidrs)
        services = self._memo.rules(
            family, context, view,
            lambda sp: render_service(sp, self.config, view, self._blocks(family, sp.protocol.lower())))
        for key in self._memo.dropped:
            for blocks in (b for (fam, _), b in self.blocks.items() if fam == family):
                for kind in ("servi", "local"):
                    blocks.release(f"{key}/{kind}")
        maps = {name: body for (fam, _), b in sorted(self.blocks.items()) if fam == family
                for name, body in b.maps(family).items()}
        return NftRuleset(family, self.table, static_part(self.config, view, family), services, maps,
                          self._memo.changes)


def render(view: NodeView, config: ProxyConfig, family: int = 4) -> NftRuleset:
    return NftRenderer(config, config.nftables_table).render(view, family)

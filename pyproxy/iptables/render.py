"""NodeView -> the iptables rules kube-proxy's iptables mode writes, chain for chain.

Invariant: pure. Render never reads the kernel; it returns a Ruleset whose text `apply` feeds to
iptables-restore and `pyproxy dump` prints. Chain names, comments, rule order and the
`--probability` format are kube-proxy's, so runbooks and tools written for it keep working.

Per service port the rules split in two: entries in the shared chains (KUBE-SERVICES,
KUBE-NODEPORTS, the filter chains) and the service's own chains (KUBE-SVC/SVL/EXT/FW/SEP). A
partial sync rewrites only the own chains of services that changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

from ..backend import PortMemo, RenderChanges
from ..chainhash import chain_hash, port_proto_hash
from ..config import ProxyConfig
from ..rendertext import object_text
from ..view import (CLUSTER_IP, EXTERNAL, EXTERNAL_IP, FIREWALL, LOAD_BALANCER_IP, NODE_PORT, TO_CLUSTER,
                    TO_LOCAL, NodeView, ServicePortView, local_traffic, node_port_ips, source_ranges_admit_node)
from ..xtables.rules import Jump, local_match

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_FIREWALL = "KUBE-FIREWALL"  # kubelet's localnet guard, written by kube-proxy too
NAT_CHAINS = (KUBE_NODEPORTS, KUBE_SERVICES, KUBE_MARK_MASQ, KUBE_POSTROUTING)  # the shared ones
# kube-proxy drops per-endpoint comments above this many endpoints (largeClusterMode).
LARGE_CLUSTER_ENDPOINTS = 1000


# kube-proxy's iptablesJumpChains, in its order; each is prepended, so the last ends up first.
def jump_chains(family: int, config: ProxyConfig) -> list[Jump]:
    new = ("-m", "conntrack", "--ctstate", "NEW")

    def c(text: str) -> tuple[str, ...]:
        return ("-m", "comment", "--comment", f'"{text}"')

    jumps = [
        Jump("filter", "INPUT", new + c("kubernetes externally-visible service portals"), KUBE_EXTERNAL_SERVICES),
        Jump("filter", "FORWARD", new + c("kubernetes externally-visible service portals"), KUBE_EXTERNAL_SERVICES),
        Jump("filter", "INPUT", c("kubernetes health check service ports"), KUBE_NODEPORTS),
        Jump("filter", "FORWARD", new + c("kubernetes service portals"), KUBE_SERVICES),
        Jump("filter", "OUTPUT", new + c("kubernetes service portals"), KUBE_SERVICES),
        Jump("filter", "FORWARD", c("kubernetes forwarding rules"), KUBE_FORWARD),
        Jump("filter", "INPUT", new + c("kubernetes load balancer firewall"), KUBE_PROXY_FIREWALL),
        Jump("filter", "OUTPUT", new + c("kubernetes load balancer firewall"), KUBE_PROXY_FIREWALL),
        Jump("filter", "FORWARD", new + c("kubernetes load balancer firewall"), KUBE_PROXY_FIREWALL),
        Jump("nat", "OUTPUT", c("kubernetes service portals"), KUBE_SERVICES),
        Jump("nat", "PREROUTING", c("kubernetes service portals"), KUBE_SERVICES),
        Jump("nat", "POSTROUTING", c("kubernetes postrouting rules"), KUBE_POSTROUTING),
    ]
    # kubelet's KUBE-FIREWALL: kube-proxy ensures the chain and these jumps in every family and
    # mode of its own (its iptablesKubeletJumpChains); only IPv4 with localhostNodePorts gets a rule.
    jumps += [Jump("filter", "INPUT", (), KUBE_FIREWALL), Jump("filter", "OUTPUT", (), KUBE_FIREWALL)]
    return jumps


def chain_names(sp: ServicePortView) -> dict[str, str]:
    h = port_proto_hash(sp.name_string, sp.protocol.lower())
    return {"svc": "KUBE-SVC-" + h, "svl": "KUBE-SVL-" + h, "ext": "KUBE-EXT-" + h, "fw": "KUBE-FW-" + h}


def endpoint_chain(sp: ServicePortView, endpoint: str) -> str:
    return "KUBE-SEP-" + chain_hash(sp.name_string + sp.protocol.lower() + endpoint)


def probability(n: int) -> str:
    return f"{1.0 / n:0.10f}"


@dataclass
class ServiceRules:
    """One service port's share of the ruleset."""

    shared: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (table, chain) -> lines
    chains: dict[str, list[str]] = field(default_factory=dict)  # its own nat chains -> lines

    def add(self, table: str, chain: str, *words: str) -> None:
        self.shared.setdefault((table, chain), []).append(" ".join(("-A", chain) + words))


@dataclass
class Context:
    family: int
    mark: str
    masquerade_all: bool
    local: tuple[list[str], list[str]] | None  # (if-local, if-not-local) match args
    node_ips: tuple
    large_cluster: bool

    @classmethod
    def of(cls, view: NodeView, config: ProxyConfig, family: int) -> "Context":
        endpoints = sum(len(p.reachable_endpoints) for p in view.ports if p.family == family)
        local = local_traffic(config, view, family)
        return cls(family, config.masquerade_mark, config.masquerade_all,
                   (local_match(local), local_match(local, negate=True)) if local else None,
                   view.node_ips_of(family), endpoints > LARGE_CLUSTER_ENDPOINTS)


def _comment(text: str) -> tuple[str, ...]:
    return ("-m", "comment", "--comment", f'"{text}"' if " " in text else text)


def render_service(sp: ServicePortView, ctx: Context) -> ServiceRules:
    out = ServiceRules()
    proto = sp.protocol.lower()
    name = object_text(sp.name_string)
    names = chain_names(sp)
    svc_chain, svl_chain, ext_chain, fw_chain = names["svc"], names["svl"], names["ext"], names["fw"]
    cluster_ip, port = str(sp.cluster_ip), str(sp.port)
    uses_cluster_chain, uses_local_chain = sp.uses_cluster_chain, sp.uses_local_chain
    route_chain = {TO_CLUSTER: svc_chain, TO_LOCAL: svl_chain, EXTERNAL: ext_chain, FIREWALL: fw_chain}
    internal_chain, external_policy_chain = route_chain[sp.internal_route], route_chain[sp.external_route]
    has_internal, has_external = sp.has_internal_endpoints, sp.has_external_endpoints
    uses_ext_chain, uses_fw_chain = sp.uses_external_chain, sp.uses_firewall
    # what a frontend without usable endpoints gets, internal or external alike
    unusable_comment = _comment(f"{name} has no {'local ' if sp.has_endpoints else ''}endpoints")
    nat_comments = {CLUSTER_IP: f"{name} cluster IP", EXTERNAL_IP: f"{name} external IP",
                    LOAD_BALANCER_IP: f"{name} loadbalancer IP", NODE_PORT: name}

    for fe in sp.frontends:
        if fe.kind == NODE_PORT:
            match = ("-m", proto, "-p", proto, "--dport", str(fe.port))
            unusable_match = ("-m", "addrtype", "--dst-type", "LOCAL", *match)
        else:
            match = unusable_match = ("-m", proto, "-p", proto, "-d", str(fe.address), "--dport", str(fe.port))
        if fe.route:
            out.add("nat", KUBE_NODEPORTS if fe.kind == NODE_PORT else KUBE_SERVICES,
                    *_comment(nat_comments[fe.kind]), *match, "-j", route_chain[fe.route])
        if fe.route == FIREWALL:
            out.add("filter", KUBE_PROXY_FIREWALL, *_comment(f"{name} traffic not accepted by {fw_chain}"),
                    *match, "-j", "DROP")
        if fe.verdict:  # the cluster IP's in KUBE-SERVICES, the others' in KUBE-EXTERNAL-SERVICES
            out.add("filter", KUBE_SERVICES if fe.kind == CLUSTER_IP else KUBE_EXTERNAL_SERVICES,
                    *unusable_comment, *unusable_match, "-j", fe.verdict.upper())
    if sp.health_check_node_port:
        out.add("filter", KUBE_NODEPORTS, *_comment(f"{name} health check node port"), "-m", "tcp", "-p", "tcp",
                "--dport", str(sp.health_check_node_port), "-j", "ACCEPT")

    chains = out.chains

    def rule(chain: str, *words: str) -> None:
        chains.setdefault(chain, []).append(" ".join(("-A", chain) + words))

    # Internal traffic: masquerade what did not come from a pod (or everything, masqueradeAll).
    if has_internal:
        args = (*_comment(f"{name} cluster IP"), "-m", proto, "-p", proto, "-d", cluster_ip, "--dport", port)
        if ctx.masquerade_all:
            rule(internal_chain, *args, "-j", KUBE_MARK_MASQ)
        elif ctx.local is not None:
            rule(internal_chain, *args, *ctx.local[1], "-j", KUBE_MARK_MASQ)
    # External traffic.
    if uses_ext_chain:
        chains.setdefault(ext_chain, [])
        if sp.external_route == TO_CLUSTER:  # masquerade all; a Local policy keeps the client address
            rule(ext_chain, *_comment(f"masquerade traffic for {name} external destinations"), "-j", KUBE_MARK_MASQ)
        else:
            if ctx.local is not None:
                # Pods reaching an external address of the service are not subject to the policy:
                # as if they went out to the load balancer and came back in.
                rule(ext_chain, *_comment(f"pod traffic for {name} external destinations"), *ctx.local[0],
                     "-j", svc_chain)
            rule(ext_chain, *_comment(f"masquerade LOCAL traffic for {name} external destinations"),
                 "-m", "addrtype", "--src-type", "LOCAL", "-j", KUBE_MARK_MASQ)
            rule(ext_chain, *_comment(f"route LOCAL traffic for {name} external destinations"),
                 "-m", "addrtype", "--src-type", "LOCAL", "-j", svc_chain)
        if has_external:
            rule(ext_chain, "-j", external_policy_chain)
    # loadBalancerSourceRanges.
    if uses_fw_chain:
        chains.setdefault(fw_chain, [])
        args = _comment(f"{name} loadbalancer IP")
        for cidr in sp.load_balancer_source_ranges:
            rule(fw_chain, *args, "-s", str(cidr), "-j", ext_chain)
        if source_ranges_admit_node(sp, ctx.node_ips):
            for ip in map(str, sp.load_balancer_ips):
                rule(fw_chain, *args, "-s", ip, "-j", ext_chain)
        rule(fw_chain, *_comment(f"other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"))
    sep_of = {ep.label: endpoint_chain(sp, ep.label) for ep in sp.reachable_endpoints}
    if uses_cluster_chain:
        _to_endpoints(rule, chains, sp, svc_chain, sp.cluster_endpoints, sep_of, ctx)
    if uses_local_chain:
        _to_endpoints(rule, chains, sp, svl_chain, sp.local_endpoints, sep_of, ctx)
    comment = "" if ctx.large_cluster else " " + " ".join(_comment(name))
    for ep in sp.reachable_endpoints:  # the bulk of a big ruleset: plain f-strings, no joins
        sep = sep_of[ep.label]
        affinity = f" -m recent --name {sep} --set" if sp.affinity_timeout else ""
        chains[sep] = [f"-A {sep}{comment} -s {ep.ip_text} -j {KUBE_MARK_MASQ}",  # hairpin: a pod to itself
                       f"-A {sep}{comment}{affinity} -m {proto} -p {proto} -j DNAT --to-destination {ep.label}"]
    return out


def _to_endpoints(rule, chains, sp: ServicePortView, chain: str, endpoints, sep_of: dict[str, str],
                  ctx: Context) -> None:
    chains.setdefault(chain, [])
    seps = [(sep_of[ep.label], ep.label) for ep in endpoints]
    name = object_text(sp.name_string)
    if sp.affinity_timeout:
        for sep, ep in seps:
            comment = () if ctx.large_cluster else _comment(f"{name} -> {ep}")
            rule(chain, *comment, "-m", "recent", "--name", sep, "--rcheck", "--seconds", str(sp.affinity_timeout),
                 "--reap", "-j", sep)
    n = len(seps)
    lines = chains[chain]
    for i, (sep, ep) in enumerate(seps):
        comment = "" if ctx.large_cluster else f' -m comment --comment "{name} -> {ep}"'
        chance = f" -m statistic --mode random --probability {probability(n - i)}" if i < n - 1 else ""
        lines.append(f"-A {chain}{comment}{chance} -j {sep}")


@dataclass
class Ruleset:
    """Everything one IP family's iptables gets, ready to become restore text."""

    family: int
    filter_chains: list[str]
    nat_chains: list[str]  # the shared nat chains, in kube-proxy's order
    shared: dict[tuple[str, str], list[str]]  # (table, chain) -> lines for every shared chain
    services: Mapping[str, ServiceRules]  # service port key -> its rules
    jumps: list[Jump]
    # how `services` differs from the renderer's previous ruleset's (None: compare them)
    changes: RenderChanges | None = field(default=None, compare=False)

    def service_chains(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for rules in self.services.values():
            out.update(rules.chains)
        return out

    def table_lines(self, table: str, service_keys: Iterable[str] | None = None,
                    delete_chains: Iterable[str] = (), extra_chains: Iterable[str] = (),
                    extra_rules: Iterable[str] = ()) -> Iterator[str]:
        """One table as restore input, line by line (a big ruleset is streamed, never joined).

        For nat, `service_keys` limits which services' own chains are written (None: all);
        `delete_chains` are flushed and removed; `extra_*` go in before COMMIT."""
        yield f"*{table}"
        if table == "filter":
            chain_order, own = self.filter_chains, {}
        else:
            chain_order = self.nat_chains
            keys = self.services.keys() if service_keys is None else service_keys
            own = {}
            for key in keys:
                if key in self.services:
                    own.update(self.services[key].chains)
        own_order = sorted(own)
        deleted = sorted(set(delete_chains))
        for chain in (*extra_chains, *chain_order, *own_order, *deleted):
            yield f":{chain} - [0:0]"
        for chain in chain_order:
            yield from self.shared.get((table, chain), ())
        for chain in own_order:
            yield from own[chain]
        yield from extra_rules
        for chain in deleted:
            yield f"-X {chain}"
        yield "COMMIT"

    def table_text(self, table: str, service_keys: Iterable[str] | None = None,
                   delete_chains: Iterable[str] = ()) -> str:
        return "\n".join(self.table_lines(table, service_keys, delete_chains)) + "\n"

    def restore_text(self) -> str:
        return self.table_text("filter") + self.table_text("nat")

    def dump_lines(self) -> Iterator[str]:
        """What iptables-save would list of ours: the jumps from built-in chains, then our chains."""
        for table in ("filter", "nat"):
            yield from self.table_lines(table, extra_rules=self.jump_rules(table))

    def dump_text(self) -> str:
        return "\n".join(self.dump_lines()) + "\n"

    def jump_rules(self, table: str) -> list[str]:
        """The jumps as `-A` rules, in the order they end up in the built-in chains (each is
        prepended in turn, so the last in kube-proxy's list comes first)."""
        return [f"-A {j.chain} {j.rule()}".replace("  ", " ")
                for base in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
                for j in reversed([j for j in self.jumps if j.table == table and j.chain == base])]

    def rule_count(self, table: str) -> int:
        shared = sum(len(v) for (t, _), v in self.shared.items() if t == table)
        if table == "nat":
            shared += sum(len(lines) for r in self.services.values() for lines in r.chains.values())
        return shared


class Renderer:
    """render() with a memo: a service port whose view did not change is not rendered again."""

    def __init__(self, config: ProxyConfig, random_fully: bool = True) -> None:
        self.config = config
        self.random_fully = random_fully
        self._memo: PortMemo[ServiceRules] = PortMemo()

    def render(self, view: NodeView, family: int) -> Ruleset:
        ctx = Context.of(view, self.config, family)
        services = self._memo.rules(family, ctx, view, lambda sp: render_service(sp, ctx))
        return assemble(view, self.config, family, services, self.random_fully, self._memo.changes)

    def render_services(self, view: NodeView, family: int) -> Iterator[tuple[str, ServiceRules]]:
        """Each service port's rules, one at a time (memoised); the memo is updated at the end."""
        ctx = Context.of(view, self.config, family)
        return self._memo.reuse(family, ctx, view, lambda sp: render_service(sp, ctx))

    def rendered(self, family: int) -> tuple[Mapping[str, ServiceRules], RenderChanges | None]:
        """The rules of the last render_services iteration, and how they differ from the one before."""
        return self._memo.output(family), self._memo.changes

    def lazy(self, view: NodeView, family: int) -> "LazyRuleset":
        return LazyRuleset(self, view, family)


class LazyRuleset:
    """A ruleset rendered while iptables-restore reads it.

    For a full sync of a big cluster, rendering every service first and then restoring leaves
    one core idle at a time. Here the nat table is written service by service as each is
    rendered (each service's chains declared right before its rules), and the shared chains
    (KUBE-SERVICES, ...) that jump into them come last, once all exist; the filter table, small,
    follows. `ruleset` holds the complete Ruleset once the nat table has been streamed."""

    def __init__(self, renderer: Renderer, view: NodeView, family: int) -> None:
        self.renderer = renderer
        self.view = view
        self.family = family
        self.ruleset: Ruleset | None = None

    def materialize(self) -> Ruleset:
        if self.ruleset is None:
            self.ruleset = self.renderer.render(self.view, self.family)
        return self.ruleset

    def nat_lines(self, head: Iterable[str] = (), tail=lambda rs: ()) -> Iterator[str]:
        """The nat table: `*nat`, the raw `head` lines, our chains, then `tail(ruleset)` (called
        once every service is rendered) before COMMIT."""
        yield "*nat"
        yield from head
        for chain in NAT_CHAINS:
            yield f":{chain} - [0:0]"
        for key, rules in self.renderer.render_services(self.view, self.family):
            for chain in rules.chains:
                yield f":{chain} - [0:0]"
            for lines in rules.chains.values():
                yield from lines
        services, changes = self.renderer.rendered(self.family)
        r = self.ruleset = assemble(self.view, self.renderer.config, self.family, services, self.renderer.random_fully,
                                    changes)
        for chain in r.nat_chains:
            yield from r.shared.get(("nat", chain), ())
        yield from tail(r)
        yield "COMMIT"


class Prerendered:
    """A finished Ruleset behind LazyRuleset's interface."""

    def __init__(self, ruleset: "Ruleset") -> None:
        self.ruleset = ruleset

    def materialize(self) -> "Ruleset":
        return self.ruleset

    def nat_lines(self, head: Iterable[str] = (), tail=lambda rs: ()) -> Iterator[str]:
        body = self.ruleset.table_lines("nat")
        yield next(body)
        yield from head
        for line in body:
            if line == "COMMIT":
                yield from tail(self.ruleset)
            yield line


def render(view: NodeView, config: ProxyConfig, family: int = 4, random_fully: bool = True) -> Ruleset:
    return Renderer(config, random_fully).render(view, family)


def assemble(view: NodeView, config: ProxyConfig, family: int, services: Mapping[str, ServiceRules],
             random_fully: bool = True, changes: RenderChanges | None = None) -> Ruleset:
    mark = config.masquerade_mark
    filter_chains = [KUBE_NODEPORTS, KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FIREWALL, KUBE_FORWARD,
                     KUBE_PROXY_FIREWALL]
    nat_chains = list(NAT_CHAINS)
    shared: dict[tuple[str, str], list[str]] = {}
    for rules in services.values():
        for key, lines in rules.shared.items():
            shared.setdefault(key, []).extend(lines)

    def add(table: str, chain: str, *words: str) -> None:
        shared.setdefault((table, chain), []).append(" ".join(("-A", chain) + words))

    if family == 4 and config.localhost_node_ports:
        add("filter", KUBE_FIREWALL, *_comment("block incoming localnet connections"), "-d", "127.0.0.0/8",
            "!", "-s", "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP")
    if not config.conntrack_tcp_be_liberal:  # the kernel then accepts those packets itself, as kube-proxy leaves it
        add("filter", KUBE_FORWARD, "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
    add("filter", KUBE_FORWARD, *_comment("kubernetes forwarding rules"), "-m", "mark", "--mark",
        f"{mark}/{mark}", "-j", "ACCEPT")
    add("filter", KUBE_FORWARD, *_comment("kubernetes forwarding conntrack rule"), "-m", "conntrack",
        "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
    add("nat", KUBE_MARK_MASQ, "-j", "MARK", "--or-mark", mark)
    add("nat", KUBE_POSTROUTING, "-m", "mark", "!", "--mark", f"{mark}/{mark}", "-j", "RETURN")
    add("nat", KUBE_POSTROUTING, "-j", "MARK", "--xor-mark", mark)
    add("nat", KUBE_POSTROUTING, *_comment("kubernetes service traffic requiring SNAT"), "-j", "MASQUERADE",
        *(["--random-fully"] if random_fully else []))
    # The tail-call to node ports: after every other service rule.
    nodeport_comment = _comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain")
    chosen = node_port_ips(view, config, family)
    if chosen is None:
        dest = ["-m", "addrtype", "--dst-type", "LOCAL"]
        if family == 6:
            dest += ["!", "-d", "::1/128"]
        elif not config.localhost_node_ports:
            dest += ["!", "-d", "127.0.0.0/8"]
        add("nat", KUBE_SERVICES, *nodeport_comment, *dest, "-j", KUBE_NODEPORTS)
    else:
        for ip in chosen:
            add("nat", KUBE_SERVICES, *nodeport_comment, "-d", str(ip), "-j", KUBE_NODEPORTS)
    return Ruleset(family, filter_chains, nat_chains, shared, services, jump_chains(family, config), changes)

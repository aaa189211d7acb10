"""NodeView -> what IPVS mode programs: virtual servers, addresses, ipsets and iptables rules.

Invariant: pure; render never reads the kernel. The layout is kube-proxy's IPVS mode
(pkg/proxy/ipvs): a virtual server per ClusterIP, externalIP, LoadBalancer IP and node IP x
NodePort, real servers in NAT (masquerade) mode with weight 1, persistence for ClientIP affinity,
service addresses bound to the dummy `kube-ipvs0`, the `KUBE-*` ipsets and the iptables chains
that match them (masquerade, hairpin, NodePorts, source ranges, KUBE-IPVS-FILTER).

Departures, so that IPVS mode behaves like the other backends (DESIGN.md's checklist):
* a frontend with no endpoints is REJECTed (ipset KUBE-NO-ENDPOINTS, filter chain
  KUBE-SERVICES); kube-proxy's IPVS mode lets such packets reach the node's own stack;
* a cluster IP with internalTrafficPolicy=Local and no endpoint on this node drops
  (KUBE-NO-INTERNAL-ENDPOINTS);
* an externalTrafficPolicy=Local frontend with no endpoint on this node drops traffic from
  outside (ipset KUBE-NO-LOCAL-ENDPOINTS); its virtual server keeps the cluster endpoints, as
  kube-proxy does, so pods on this node still reach the service;
* the node's own connections to eTP=Local frontends are masqueraded, as iptables mode does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

from ..backend import PortMemo
from ..config import ProxyConfig
from ..view import REJECT, NodeView, ServicePortView, local_traffic, node_port_ips, source_ranges_admit_node
from ..xtables.rules import local_match

DUMMY_DEVICE = "kube-ipvs0"
PERSISTENT = 0x1  # IP_VS_SVC_F_PERSISTENT
PROTO_FLAGS = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}


class RealServer(NamedTuple):
    ip: str
    port: int


class VirtualServer(NamedTuple):
    protocol: str  # TCP, UDP, SCTP
    ip: str
    port: int
    scheduler: str
    timeout: int  # persistence seconds, 0 for none
    reals: tuple[RealServer, ...]

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.protocol, self.ip, self.port)

    def address(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"

    def save_lines(self) -> list[str]:
        """As `ipvsadm-save -n` prints it."""
        flag = PROTO_FLAGS[self.protocol]
        head = f"-A {flag} {self.address()} -s {self.scheduler}" + (f" -p {self.timeout}" if self.timeout else "")
        reals = sorted(self.reals, key=lambda r: (r.ip, r.port))
        return [head] + [f"-a {flag} {self.address()} -r {_hostport(r.ip, r.port)} -m -w 1" for r in reals]


def _hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True)
class IpSetSpec:
    kind: str  # hash:ip,port ...
    comment: str


# kube-proxy's ipsets (pkg/proxy/ipvs/ipset.go), then pyproxy's two; IPv6 names start KUBE-6-.
IPSETS = {
    "KUBE-LOOP-BACK": IpSetSpec("hash:ip,port,ip", "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"),
    "KUBE-CLUSTER-IP": IpSetSpec("hash:ip,port", "Kubernetes service cluster ip + port for masquerade purpose"),
    "KUBE-EXTERNAL-IP": IpSetSpec("hash:ip,port", "Kubernetes service external ip + port for masquerade and filter purpose"),
    "KUBE-EXTERNAL-IP-LOCAL": IpSetSpec("hash:ip,port", "Kubernetes service external ip + port with externalTrafficPolicy=local"),
    "KUBE-LOAD-BALANCER": IpSetSpec("hash:ip,port", "Kubernetes service lb portal"),
    "KUBE-LOAD-BALANCER-FW": IpSetSpec("hash:ip,port", "Kubernetes service load balancer ip + port for load balancer with sourceRange"),
    "KUBE-LOAD-BALANCER-LOCAL": IpSetSpec("hash:ip,port", "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"),
    "KUBE-LOAD-BALANCER-SOURCE-IP": IpSetSpec("hash:ip,port,ip", "Kubernetes service load balancer ip + port + source IP for packet filter purpose"),
    "KUBE-LOAD-BALANCER-SOURCE-CIDR": IpSetSpec("hash:ip,port,net", "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"),
    "KUBE-NODE-PORT-TCP": IpSetSpec("bitmap:port", "Kubernetes nodeport TCP port for masquerade purpose"),
    "KUBE-NODE-PORT-LOCAL-TCP": IpSetSpec("bitmap:port", "Kubernetes nodeport TCP port with externalTrafficPolicy=local"),
    "KUBE-NODE-PORT-UDP": IpSetSpec("bitmap:port", "Kubernetes nodeport UDP port for masquerade purpose"),
    "KUBE-NODE-PORT-LOCAL-UDP": IpSetSpec("bitmap:port", "Kubernetes nodeport UDP port with externalTrafficPolicy=local"),
    "KUBE-NODE-PORT-SCTP-HASH": IpSetSpec("hash:ip,port", "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"),
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH": IpSetSpec("hash:ip,port", "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'"),
    "KUBE-HEALTH-CHECK-NODE-PORT": IpSetSpec("bitmap:port", "Kubernetes health check node port"),
    "KUBE-IPVS-IPS": IpSetSpec("hash:ip", "IPVS virtual server IP addresses"),
    "KUBE-NO-ENDPOINTS": IpSetSpec("hash:ip,port", "pyproxy: service frontends without endpoints (rejected)"),
    "KUBE-NO-LOCAL-ENDPOINTS": IpSetSpec("hash:ip,port", "pyproxy: externalTrafficPolicy=Local frontends without local endpoints"),
    "KUBE-NO-INTERNAL-ENDPOINTS": IpSetSpec("hash:ip,port", "pyproxy: internalTrafficPolicy=Local cluster IPs without local endpoints"),
}


def set_name(name: str, family: int) -> str:
    return name if family == 4 else name.replace("KUBE-", "KUBE-6-", 1)[:31]


@dataclass
class PortIpvs:
    """One service port's share of the node's IPVS state."""

    servers: list[VirtualServer] = field(default_factory=list)
    bind: set[str] = field(default_factory=set)
    entries: dict[str, set[str]] = field(default_factory=dict)  # base set name -> entries
    no_node_access: list[tuple[str, str, int]] = field(default_factory=list)  # LB (ip, proto, port) nodes may not reach

    def add(self, base_set: str, entry: str) -> None:
        self.entries.setdefault(base_set, set()).add(entry)


@dataclass
class IpvsRuleset:
    family: int
    ports: Mapping[str, PortIpvs]
    nat: list[str]  # iptables-restore lines for our chains (declarations and rules)
    filter: list[str]
    jumps: list[tuple[str, str, str]]  # (table, built-in chain, rule) prepended there

    def servers(self) -> dict[tuple[str, str, int], VirtualServer]:
        return {vs.key: vs for p in self.ports.values() for vs in p.servers}

    def bind_addresses(self) -> set[str]:
        return {ip for p in self.ports.values() for ip in p.bind}

    def sets(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {set_name(n, self.family): set() for n in IPSETS}
        for p in self.ports.values():
            for base, entries in p.entries.items():
                out[set_name(base, self.family)] |= entries
        out[set_name("KUBE-IPVS-IPS", self.family)] = self.bind_addresses()
        return out

    def ipset_lines(self) -> list[str]:
        """`ipset restore` input that creates every set (if missing) and lists its entries."""
        inet = "inet" if self.family == 4 else "inet6"
        lines = []
        for base, spec in IPSETS.items():
            name = set_name(base, self.family)
            if spec.kind == "bitmap:port":
                lines.append(f"create {name} bitmap:port range 0-65535 comment")
            else:
                lines.append(f"create {name} {spec.kind} family {inet} hashsize 1024 maxelem 1048576 comment")
        for name, entries in sorted(self.sets().items()):
            lines += [f"add {name} {e}" for e in sorted(entries)]
        return lines

    def text(self) -> str:
        """What `pyproxy dump --backend ipvs` prints: ipvsadm-save -n, ipset save, iptables-save."""
        vs = [line for server in sorted(self.servers().values()) for line in server.save_lines()]
        out = ["# IPVS (ipvsadm-save -n)", *vs,
               f"# addresses on {DUMMY_DEVICE}", *sorted(self.bind_addresses()),
               "# ipsets (ipset save)", *self.ipset_lines(),
               "# iptables (iptables-save)", *self.nat, *self.filter]
        return "\n".join(out) + "\n"


def render_port(sp: ServicePortView, config: ProxyConfig, view: NodeView, node_port_addresses: list[str]) -> PortIpvs:
    """kube-proxy's per-service-port loop of syncProxyRules; NodePorts on node_port_addresses."""
    out = PortIpvs()
    proto = sp.protocol.lower()
    scheduler = config.ipvs_scheduler
    timeout = sp.affinity_timeout
    node_ips = [str(ip) for ip in view.node_ips_of(sp.family)]

    def server(ip: str, port: int, endpoints) -> VirtualServer:
        reals = tuple(RealServer(ep.ip_text, ep.port) for ep in endpoints)
        return VirtualServer(sp.protocol, ip, port, scheduler, timeout, reals)

    for ep in sp.reachable_endpoints:
        if ep.local:
            out.add("KUBE-LOOP-BACK", f"{ep.ip_text},{proto}:{ep.port},{ep.ip_text}")
    # kube-proxy's syncEndpoint: Local policy takes the local endpoints, or the cluster ones when
    # there are none here (pods on this node still reach the service; see the module docstring)
    internal = sp.local_endpoints if sp.internal_policy_local else sp.cluster_endpoints
    external = (sp.local_endpoints or sp.cluster_endpoints) if sp.external_policy_local else sp.cluster_endpoints

    # the frontends' no-endpoint verdicts as IPVS mode's sets: rejected when the service has no
    # endpoint anywhere, dropped when only the policy's local ones are missing (cluster IP: iTP)
    cip = str(sp.cluster_ip)
    out.add("KUBE-CLUSTER-IP", f"{cip},{proto}:{sp.port}")
    out.servers.append(server(cip, sp.port, internal))
    out.bind.add(cip)
    if sp.internal_verdict:
        out.add("KUBE-NO-ENDPOINTS" if sp.internal_verdict == REJECT else "KUBE-NO-INTERNAL-ENDPOINTS",
                f"{cip},{proto}:{sp.port}")

    def external_frontend(ip: str, port: int) -> None:
        if sp.external_verdict:
            out.add("KUBE-NO-ENDPOINTS" if sp.external_verdict == REJECT else "KUBE-NO-LOCAL-ENDPOINTS",
                    f"{ip},{proto}:{port}")

    for ip in map(str, sp.external_ips):
        out.add("KUBE-EXTERNAL-IP-LOCAL" if sp.external_policy_local else "KUBE-EXTERNAL-IP", f"{ip},{proto}:{sp.port}")
        out.servers.append(server(ip, sp.port, external))
        if ip not in node_ips:  # an address the node already has stays where it is
            out.bind.add(ip)
        external_frontend(ip, sp.port)
    for ip in map(str, sp.load_balancer_ips):
        entry = f"{ip},{proto}:{sp.port}"
        out.add("KUBE-LOAD-BALANCER", entry)
        if sp.external_policy_local:
            out.add("KUBE-LOAD-BALANCER-LOCAL", entry)
        if sp.load_balancer_source_ranges:
            out.add("KUBE-LOAD-BALANCER-FW", entry)
            for cidr in sp.load_balancer_source_ranges:
                out.add("KUBE-LOAD-BALANCER-SOURCE-CIDR", f"{entry},{cidr}")
            if source_ranges_admit_node(sp, view.node_ips_of(sp.family)):
                out.add("KUBE-LOAD-BALANCER-SOURCE-IP", f"{entry},{ip}")
            else:
                out.no_node_access.append((ip, proto, sp.port))
        out.servers.append(server(ip, sp.port, external))
        if ip not in node_ips:
            out.bind.add(ip)
        external_frontend(ip, sp.port)
    if sp.node_port:
        if proto == "sctp":
            for ip in node_port_addresses:
                out.add("KUBE-NODE-PORT-SCTP-HASH", f"{ip},{proto}:{sp.node_port}")
                if sp.external_policy_local:
                    out.add("KUBE-NODE-PORT-LOCAL-SCTP-HASH", f"{ip},{proto}:{sp.node_port}")
        else:
            out.add(f"KUBE-NODE-PORT-{proto.upper()}", str(sp.node_port))
            if sp.external_policy_local:
                out.add(f"KUBE-NODE-PORT-LOCAL-{proto.upper()}", str(sp.node_port))
        for ip in node_port_addresses:
            out.servers.append(server(ip, sp.node_port, external))
            external_frontend(ip, sp.node_port)
    if sp.health_check_node_port:
        out.add("KUBE-HEALTH-CHECK-NODE-PORT", str(sp.health_check_node_port))
    return out


# (set, table, chain, match, target, protocol): kube-proxy's ipsetWithIptablesChain, in its order
SET_RULES = [
    ("KUBE-LOOP-BACK", "nat", "KUBE-POSTROUTING", "dst,dst,src", "MASQUERADE", ""),
    ("KUBE-LOAD-BALANCER", "nat", "KUBE-SERVICES", "dst,dst", "KUBE-LOAD-BALANCER", ""),
    ("KUBE-LOAD-BALANCER-LOCAL", "nat", "KUBE-LOAD-BALANCER", "dst,dst", "RETURN", ""),
    ("KUBE-NODE-PORT-LOCAL-TCP", "nat", "KUBE-NODE-PORT", "dst", "RETURN", "tcp"),
    ("KUBE-NODE-PORT-TCP", "nat", "KUBE-NODE-PORT", "dst", "KUBE-MARK-MASQ", "tcp"),
    ("KUBE-NODE-PORT-LOCAL-UDP", "nat", "KUBE-NODE-PORT", "dst", "RETURN", "udp"),
    ("KUBE-NODE-PORT-UDP", "nat", "KUBE-NODE-PORT", "dst", "KUBE-MARK-MASQ", "udp"),
    ("KUBE-NODE-PORT-LOCAL-SCTP-HASH", "nat", "KUBE-NODE-PORT", "dst,dst", "RETURN", "sctp"),
    ("KUBE-NODE-PORT-SCTP-HASH", "nat", "KUBE-NODE-PORT", "dst,dst", "KUBE-MARK-MASQ", "sctp"),
    ("KUBE-LOAD-BALANCER-FW", "filter", "KUBE-PROXY-FIREWALL", "dst,dst", "KUBE-SOURCE-RANGES-FIREWALL", ""),
    ("KUBE-LOAD-BALANCER-SOURCE-CIDR", "filter", "KUBE-SOURCE-RANGES-FIREWALL", "dst,dst,src", "RETURN", ""),
    ("KUBE-LOAD-BALANCER-SOURCE-IP", "filter", "KUBE-SOURCE-RANGES-FIREWALL", "dst,dst,src", "RETURN", ""),
]
NAT_CHAINS = ("KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER", "KUBE-MARK-MASQ")
FILTER_CHAINS = ("KUBE-SERVICES", "KUBE-FORWARD", "KUBE-NODE-PORT", "KUBE-PROXY-FIREWALL",
                 "KUBE-SOURCE-RANGES-FIREWALL", "KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER")


def jumps() -> list[tuple[str, str, str]]:
    """kube-proxy's iptablesJumpChain for IPVS mode, plus the jumps into pyproxy's filter
    KUBE-SERVICES (the no-endpoint REJECTs)."""
    c = lambda text: f'-m comment --comment "{text}"'  # noqa: E731
    new = "-m conntrack --ctstate NEW"
    return [
        ("nat", "OUTPUT", f"{c('kubernetes service portals')} -j KUBE-SERVICES"),
        ("nat", "PREROUTING", f"{c('kubernetes service portals')} -j KUBE-SERVICES"),
        ("nat", "POSTROUTING", f"{c('kubernetes postrouting rules')} -j KUBE-POSTROUTING"),
        ("filter", "FORWARD", f"{c('kubernetes forwarding rules')} -j KUBE-FORWARD"),
        ("filter", "INPUT", f"{c('kubernetes health check rules')} -j KUBE-NODE-PORT"),
        ("filter", "INPUT", f"{c('kube-proxy firewall rules')} -j KUBE-PROXY-FIREWALL"),
        ("filter", "FORWARD", f"{c('kube-proxy firewall rules')} -j KUBE-PROXY-FIREWALL"),
        ("filter", "INPUT", f"{c('kubernetes ipvs access filter')} -j KUBE-IPVS-FILTER"),
        ("filter", "OUTPUT", f"{c('kubernetes ipvs access filter')} -j KUBE-IPVS-OUT-FILTER"),
        *(("filter", chain, f"{new} {c('kubernetes service portals')} -j KUBE-SERVICES")
          for chain in ("INPUT", "FORWARD", "OUTPUT")),
    ]


def iptables_rules(config: ProxyConfig, view: NodeView, family: int, sets: dict[str, set[str]],
                   no_node_access: list[tuple[str, str, int]]) -> tuple[list[str], list[str]]:
    """kube-proxy's writeIptablesRules: (nat lines, filter lines) for iptables-restore --noflush."""
    mark = config.masquerade_mark
    name = lambda base: set_name(base, family)  # noqa: E731
    used = lambda base: bool(sets[name(base)])  # noqa: E731
    comment = lambda base: f'-m comment --comment "{IPSETS[base].comment}"'  # noqa: E731
    nat = ["*nat", *(f":{c} - [0:0]" for c in NAT_CHAINS)]
    flt = ["*filter", *(f":{c} - [0:0]" for c in FILTER_CHAINS)]
    nat.append(f"-A KUBE-SERVICES -s {'127.0.0.0/8' if family == 4 else '::1/128'} -j RETURN")
    if any(used(b) for b in ("KUBE-NODE-PORT-LOCAL-TCP", "KUBE-NODE-PORT-LOCAL-UDP", "KUBE-NODE-PORT-LOCAL-SCTP-HASH")):
        nat.append("-A KUBE-NODE-PORT -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ")  # pyproxy, as above
    for base, table, chain, match, target, proto in SET_RULES:
        if used(base):
            rule = (f"-A {chain}" + (f" -p {proto}" if proto else "")
                    + f" {comment(base)} -m set --match-set {name(base)} {match} -j {target}")
            (nat if table == "nat" else flt).append(rule)
    if used("KUBE-CLUSTER-IP"):
        head = f"-A KUBE-SERVICES {comment('KUBE-CLUSTER-IP')} -m set --match-set {name('KUBE-CLUSTER-IP')}"
        local = local_traffic(config, view, family)
        if config.masquerade_all:
            nat.append(f"{head} dst,dst -j KUBE-MARK-MASQ")
        elif local is not None:
            nat.append(f"{head} dst,dst {' '.join(local_match(local, negate=True))} -j KUBE-MARK-MASQ")
        else:
            nat.append(f"{head} src,dst -j KUBE-MARK-MASQ")
    # pyproxy: the node's own connections to eTP=Local frontends are masqueraded, as in iptables
    # mode (their source would be the service address itself, which no endpoint can answer);
    # before the external-IP ACCEPTs below, which end the chain
    for base in ("KUBE-EXTERNAL-IP-LOCAL", "KUBE-LOAD-BALANCER-LOCAL"):
        if used(base):
            nat.append(f"-A KUBE-SERVICES -m set --match-set {name(base)} dst,dst -m addrtype --src-type LOCAL "
                       "-j KUBE-MARK-MASQ")
    for base in ("KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL"):
        if used(base):
            head = f"-A KUBE-SERVICES {comment(base)} -m set --match-set {name(base)} dst,dst"
            if base == "KUBE-EXTERNAL-IP":
                nat.append(f"{head} -j KUBE-MARK-MASQ")
            # traffic from off the machine (not a bridge, not local) and to local addresses is accepted
            nat.append(f"{head} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT")
            nat.append(f"{head} -m addrtype --dst-type LOCAL -j ACCEPT")
    nat.append("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT")
    nat.append("-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ")
    flt.append("-A KUBE-SOURCE-RANGES-FIREWALL -j DROP")
    for ip, proto, port in no_node_access:
        flt.append(f"-A KUBE-IPVS-OUT-FILTER -s {ip} -m ipvs --vaddr {ip} --vproto {proto} --vport {port} -j DROP")
    for base in ("KUBE-CLUSTER-IP", "KUBE-LOAD-BALANCER"):
        if used(base):
            nat.append(f"-A KUBE-SERVICES -m set --match-set {name(base)} dst,dst -j ACCEPT")
    flt += [f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {mark}/{mark} -j ACCEPT',
            '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack '
            "--ctstate RELATED,ESTABLISHED -j ACCEPT",
            f"-A KUBE-NODE-PORT {comment('KUBE-HEALTH-CHECK-NODE-PORT')} -m set --match-set "
            f"{name('KUBE-HEALTH-CHECK-NODE-PORT')} dst -j ACCEPT"]
    for base in ("KUBE-LOAD-BALANCER", "KUBE-CLUSTER-IP", "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL"):
        flt.append(f"-A KUBE-IPVS-FILTER -m set --match-set {name(base)} dst,dst -j RETURN")
    flt.append(f"-A KUBE-IPVS-FILTER -m set --match-set {name('KUBE-HEALTH-CHECK-NODE-PORT')} dst -j RETURN")
    flt.append(f"-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set {name('KUBE-IPVS-IPS')} dst -j REJECT")
    # pyproxy: no endpoints -> refused; eTP=Local without local endpoints -> dropped from outside
    reject = "--reject-with icmp-port-unreachable" if family == 4 else "--reject-with icmp6-port-unreachable"
    if used("KUBE-NO-ENDPOINTS"):
        flt.append(f"-A KUBE-SERVICES {comment('KUBE-NO-ENDPOINTS')} -m set --match-set {name('KUBE-NO-ENDPOINTS')} "
                   f"dst,dst -j REJECT {reject}")
    if used("KUBE-NO-INTERNAL-ENDPOINTS"):
        flt.append(f"-A KUBE-SERVICES {comment('KUBE-NO-INTERNAL-ENDPOINTS')} -m set --match-set "
                   f"{name('KUBE-NO-INTERNAL-ENDPOINTS')} dst,dst -j DROP")
    if used("KUBE-NO-LOCAL-ENDPOINTS"):
        head = (f"-A KUBE-SERVICES {comment('KUBE-NO-LOCAL-ENDPOINTS')} -m set --match-set "
                f"{name('KUBE-NO-LOCAL-ENDPOINTS')} dst,dst")
        local = local_traffic(config, view, family)
        pods = f" {' '.join(local_match(local, negate=True))}" if local is not None else ""
        flt.append(f"{head}{pods} -m addrtype ! --src-type LOCAL -j DROP")
    nat += [f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN",
            f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}",
            '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
            "-j MASQUERADE --random-fully",
            f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}", "COMMIT"]
    flt.append("COMMIT")
    return nat, flt


class IpvsRenderer:
    """render() with a per-service-port memo: an unchanged port keeps its PortIpvs object, so the
    backend finds what changed by identity."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self._memo: PortMemo[PortIpvs] = PortMemo()

    def render(self, view: NodeView, family: int) -> IpvsRuleset:
        chosen = node_port_ips(view, self.config, family)  # kube-proxy's nodePortAddresses, once per render
        addresses = [str(ip) for ip in (view.node_ips_of(family) if chosen is None else chosen)]
        context = (view.node_ips_of(family), view.pod_cidrs, tuple(addresses))  # a port's servers use all three
        ports = self._memo.rules(family, context, view, lambda sp: render_port(sp, self.config, view, addresses))
        ruleset = IpvsRuleset(family, ports, [], [], jumps())
        no_access = [x for p in ports.values() for x in p.no_node_access]
        ruleset.nat, ruleset.filter = iptables_rules(self.config, view, family, ruleset.sets(), no_access)
        return ruleset


def render(view: NodeView, config: ProxyConfig, family: int = 4) -> IpvsRuleset:
    return IpvsRenderer(config).render(view, family)

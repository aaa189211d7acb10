"""Reconcile the kernel with an IpvsRuleset: IPVS through its netlink API (pyproxy/netlink/ipvs.py, many
changes per system call), the dummy device's addresses (rtnetlink), the ipsets (`ipset restore`)
and the iptables chains IPVS mode needs.

Never a flush: a full sync reads the live IPVS table and changes only the differences; a partial
sync looks only at the virtual servers of service ports whose rendering changed (the renderer
hands back the very same object for an unchanged port). A real server that goes away is
quiesced first (weight 0) when it carries TCP, and deleted once IPVS counts no connection on it
(checked at every sync); UDP and SCTP real servers go at once, as kube-proxy does.

IPVS has no transactions: a failure part-way leaves what was done, and makes the next sync a
full one, which repairs it.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time

from ..backend import SyncError, SyncResult
from ..xtables.client import XtablesClient
from ..xtables.rules import CANARY, Jump, chain_removal, is_service_chain, missing_jumps
from ..netlink.ipvs import DEL_DEST, DEL_SERVICE, NEW_DEST, NEW_SERVICE, SET_DEST, SET_SERVICE, Dest, IpvsSocket, Service
from ..netlink.route import Netlink
from .render import DUMMY_DEVICE, IPSETS, IpvsRuleset, PortIpvs, RealServer, set_name


class IpvsError(SyncError):
    pass


class IpvsUnavailable(IpvsError):
    pass


def ensure_ip_vs() -> None:
    """A clear error, at start-up, on a node whose kernel has no IPVS."""
    if os.path.exists("/proc/net/ip_vs"):
        return
    try:
        with IpvsSocket():  # resolving the IPVS netlink family makes the kernel load ip_vs
            pass
    except OSError as err:
        raise IpvsUnavailable(
            "IPVS mode needs the ip_vs kernel module (and ip_vs_rr or the configured scheduler's); "
            f"load them with `modprobe ip_vs ip_vs_rr` or choose mode iptables or nftables ({err})") from None


class IpvsBackend:
    def __init__(self, family: int = 4, variant: str = "auto", strict_arp: bool = False,
                 exclude_cidrs: tuple = ()) -> None:
        self.family = family
        self.iptables = XtablesClient(family, variant)
        self.strict_arp = strict_arp
        self.exclude = exclude_cidrs
        self._ports: dict[str, PortIpvs] | None = None  # what the kernel holds, by service port
        self._sets: dict[str, set[str]] = {}
        self._iptables: tuple[list[str], list[str]] | None = None
        self._bound: set[str] = set()
        self.terminating: dict[tuple[tuple[str, str, int], RealServer], float] = {}  # -> since
        self.last_ruleset: IpvsRuleset | None = None

    @property
    def variant(self) -> str:
        return f"ipvs+iptables-{self.iptables.variant}"

    # -- the pieces ------------------------------------------------------------------------------

    def _prepare(self) -> None:
        ensure_ip_vs()
        sysctls = {"net/ipv4/vs/conntrack": "1", "net/ipv4/vs/expire_nodest_conn": "1",
                   "net/ipv4/vs/expire_quiescent_template": "1", "net/ipv4/ip_forward": "1"}
        if self.strict_arp:
            sysctls |= {"net/ipv4/conf/all/arp_ignore": "1", "net/ipv4/conf/all/arp_announce": "2"}
        # conn_reuse_mode is left alone: kernels from 5.9 no longer need kube-proxy's workaround
        for key, value in sysctls.items():
            with open(f"/proc/sys/{key}", "w") as f:
                f.write(value)

    def _sync_addresses(self, want: set[str], full: bool, remove: bool) -> None:
        """Bind service addresses to kube-ipvs0 (so the kernel takes them as local); with
        `remove`, unbind what is no longer wanted (after the virtual servers went)."""
        if not full and not remove and want <= self._bound:
            return
        if remove and not (self._bound - want):
            return
        prefix = 32 if self.family == 4 else 128
        with Netlink() as nl:
            link = nl.link(DUMMY_DEVICE)
            if link is None:  # kept down, as kube-proxy keeps it: its addresses are local all the same
                nl.create_link(DUMMY_DEVICE, "dummy")
                link = nl.link(DUMMY_DEVICE)
            if full:
                self._bound = {str(i.ip) for i in nl.addresses(link.index) if i.version == self.family}
            if remove:
                for ip in sorted(self._bound - want):
                    nl.delete_address(link.index, ipaddress.ip_interface(f"{ip}/{prefix}"))
                    self._bound.discard(ip)
                return
            for ip in sorted(want - self._bound):
                nl.add_address(link.index, ipaddress.ip_interface(f"{ip}/{prefix}"))
                self._bound.add(ip)

    def _sync_ipsets(self, ruleset: IpvsRuleset, full: bool) -> None:
        want = ruleset.sets()
        if full:
            self._sets = _live_sets(set(want))
        lines = [line for line in ruleset.ipset_lines() if line.startswith("create ")] if full else []
        for name in sorted(want):
            have = self._sets.get(name, set())
            lines += [f"del {name} {e}" for e in sorted(have - want[name])]
            lines += [f"add {name} {e}" for e in sorted(want[name] - have)]
        if lines:
            proc = subprocess.run(["ipset", "restore", "-exist"], input="\n".join(lines) + "\n",
                                  capture_output=True, text=True)
            if proc.returncode:
                raise IpvsError(f"ipset restore failed: {proc.stderr.strip()}")
        self._sets = {k: set(v) for k, v in want.items()}

    def _sync_iptables(self, ruleset: IpvsRuleset, full: bool) -> None:
        """Our chains, rewritten whole when they changed (they are small: the ipsets carry the
        per-service data). A full sync also adds missing jumps and removes what iptables mode
        leaves behind (service chains, KUBE-NODEPORTS...), in the same transaction per table."""
        if not full and self._iptables == (ruleset.nat, ruleset.filter):
            return
        tables = {"nat": list(ruleset.nat[:-1]), "filter": list(ruleset.filter[:-1])}
        extra: list[str] = []
        if full:
            jumps = [Jump(t, c, tuple(rule.rsplit(" -j ", 1)[0].split()), rule.rsplit(" -j ", 1)[1])
                     for t, c, rule in ruleset.jumps]
            live = self.iptables.save("nat", "filter", "mangle")
            if CANARY in live["mangle"].chains:  # iptables mode's canary goes too
                extra = ["*mangle", f":{CANARY} - [0:0]", f"-X {CANARY}", "COMMIT"]
            for table, lines in tables.items():
                state = live[table]
                stale = sorted(c for c in state.chains if is_service_chain(c) or c in IPTABLES_MODE_CHAINS)
                deletes, removals = chain_removal(state, stale)
                lines[1:1] = deletes  # before our declarations flush the chains they sit in
                lines += missing_jumps(jumps, table, state) + removals
        try:
            self.iptables.restore(tables["nat"] + ["COMMIT"] + tables["filter"] + ["COMMIT"] + extra)
        except Exception as err:
            raise IpvsError(str(err)) from err
        self._iptables = (list(ruleset.nat), list(ruleset.filter))

    # -- IPVS ------------------------------------------------------------------------------------

    def _ours(self, svc: Service, bound: set[str], local: set[str]) -> bool:
        """A virtual server another program made is left alone (kube-proxy deletes every one
        outside `excludeCIDRs`): ours are those on an address we bind to kube-ipvs0 (service IPs)
        and NodePorts, a port of the NodePort range on an address of this node. excludeCIDRs
        still protect any address, as upstream."""
        address = ipaddress.ip_address(svc.ip)
        if address.version != self.family or any(address in c for c in self.exclude):
            return False
        return svc.ip in bound or (svc.ip in local and svc.port in NODE_PORT_RANGE)

    def _ownership(self) -> tuple[set[str], set[str]]:
        """kube-ipvs0's addresses and all of this namespace's, read now (a restarted pyproxy
        knows its virtual servers by them)."""
        with Netlink() as nl:
            link = nl.link(DUMMY_DEVICE)
            bound = {str(i.ip) for i in nl.addresses(link.index)} if link is not None else set()
            return bound, {str(i.ip) for i in nl.addresses()}

    def _sync_ipvs(self, ruleset: IpvsRuleset, full: bool) -> tuple[int, int]:
        want = ruleset.servers()
        with IpvsSocket() as ipvs:
            self._reap(ipvs)
            if full:
                live = _live(ipvs, None)
                bound, local = self._ownership()
                keys = set(want) | {k for k, (svc, _) in live.items() if self._ours(svc, bound, local)}
            else:
                assert self._ports is not None
                old, new = self._ports, ruleset.ports
                changed = [k for k, p in new.items() if old.get(k) is not p] + [k for k in old if k not in new]
                keys = {vs.key for k in changed for p in (old.get(k), new.get(k)) if p for vs in p.servers}
                live = _live(ipvs, keys)
            changes: list[tuple[int, Service, Dest | None]] = []
            for key in sorted(keys):
                vs, have = want.get(key), live.get(key)
                if vs is None:
                    if have is not None:
                        changes.append((DEL_SERVICE, have[0], None))
                        for t in [t for t in self.terminating if t[0] == key]:
                            del self.terminating[t]
                    continue
                service = Service(vs.protocol, vs.ip, vs.port, vs.scheduler, vs.timeout)
                if have is None:
                    changes.append((NEW_SERVICE, service, None))
                    reals: dict[RealServer, Dest] = {}
                else:
                    if (have[0].scheduler, have[0].timeout) != (vs.scheduler, vs.timeout):
                        changes.append((SET_SERVICE, service, None))
                    reals = have[1]
                for rs in vs.reals:
                    dest = reals.get(rs)
                    if dest is None:
                        changes.append((NEW_DEST, service, Dest(rs.ip, rs.port, 1)))
                    elif dest.weight != 1:  # back from quiescing
                        changes.append((SET_DEST, service, Dest(rs.ip, rs.port, 1)))
                        self.terminating.pop((key, rs), None)
                wanted = set(vs.reals)
                for rs, dest in reals.items():
                    if rs in wanted:
                        continue
                    if vs.protocol == "TCP" and dest.connections:
                        if dest.weight:
                            changes.append((SET_DEST, service, Dest(rs.ip, rs.port, 0)))
                        self.terminating.setdefault((key, rs), time.monotonic())
                    else:
                        changes.append((DEL_DEST, service, Dest(rs.ip, rs.port, 0)))
                        self.terminating.pop((key, rs), None)
            ipvs.apply(changes)
        written = sum(1 for c in changes if c[0] in (NEW_SERVICE, SET_SERVICE, NEW_DEST, SET_DEST))
        return written, len(changes) - written

    def _reap(self, ipvs: IpvsSocket) -> None:
        """Delete quiesced real servers that no longer carry a connection."""
        if not self.terminating:
            return
        live = _live(ipvs, {key for key, _ in self.terminating})
        changes = []
        for key, rs in list(self.terminating):
            have = live.get(key)
            if have is None or rs not in have[1]:
                del self.terminating[(key, rs)]
            elif have[1][rs].connections == 0:
                changes.append((DEL_DEST, have[0], Dest(rs.ip, rs.port, 0)))
                del self.terminating[(key, rs)]
        ipvs.apply(changes)

    # -- syncs ------------------------------------------------------------------------------------

    def sync(self, ruleset: IpvsRuleset, full: bool = False) -> SyncResult:
        start = time.monotonic()
        full = full or self._ports is None
        try:
            if full:
                self._prepare()
            want_bound = ruleset.bind_addresses()
            self._sync_addresses(want_bound, full, remove=False)
            self._sync_ipsets(ruleset, full)
            self._sync_iptables(ruleset, full)
            written, deleted = self._sync_ipvs(ruleset, full)
            self._sync_addresses(want_bound, False, remove=True)
        except IpvsUnavailable:
            raise
        except Exception as err:
            self._ports = None
            raise err if isinstance(err, IpvsError) else IpvsError(f"IPVS sync failed: {err}") from err
        self._ports = dict(ruleset.ports)
        self.last_ruleset = ruleset
        return SyncResult(full, time.monotonic() - start, written, deleted, 0)

    def cleanup(self, keep_shared_chains: bool = False) -> int:
        """Remove our virtual servers, the dummy device, our chains and the jumps to them, and our
        ipsets. `keep_shared_chains` leaves the chains whose names iptables mode uses too (it
        has rewritten them by then)."""
        removed = 0
        if os.path.exists("/proc/net/ip_vs"):
            bound, local = self._ownership()
            with IpvsSocket() as ipvs:
                ours = [(DEL_SERVICE, svc, None) for svc in ipvs.services() if self._ours(svc, bound, local)]
                ipvs.apply(ours)
                removed += len(ours)
        with Netlink() as nl:
            link = nl.link(DUMMY_DEVICE)
            if link is not None:
                nl.delete_link(link.index)
                removed += 1
        live = self.iptables.save("nat", "filter")
        parts = []
        for table, state in live.items():
            own = IPVS_ONLY_CHAINS[table] if keep_shared_chains else IPVS_ONLY_CHAINS[table] | SHARED_CHAINS[table]
            ours = sorted(c for c in state.chains if c in own)
            if ours:
                deletes, removals = chain_removal(state, ours)
                parts += [f"*{table}", *deletes, *removals, "COMMIT"]
                removed += len(ours)
        if parts:
            self.iptables.restore(parts)
        names = [set_name(n, self.family) for n in IPSETS]
        present = _live_sets(set(names))
        if present:  # a set still used by a rule someone else wrote stays: destroy fails, harmlessly
            for name in present:
                subprocess.run(["ipset", "destroy", name], capture_output=True)
            removed += len(present)
        self._ports = None
        return removed


# Chain names: IPVS mode's own, those iptables mode uses as well, and iptables mode's alone.
NODE_PORT_RANGE = range(30000, 32768)  # the API server's default --service-node-port-range
IPVS_ONLY_CHAINS = {"nat": {"KUBE-NODE-PORT", "KUBE-LOAD-BALANCER"},
                    "filter": {"KUBE-NODE-PORT", "KUBE-SOURCE-RANGES-FIREWALL", "KUBE-IPVS-FILTER",
                               "KUBE-IPVS-OUT-FILTER"}}
SHARED_CHAINS = {"nat": {"KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"},
                 "filter": {"KUBE-SERVICES", "KUBE-FORWARD", "KUBE-PROXY-FIREWALL"}}
IPTABLES_MODE_CHAINS = {"KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL", "KUBE-PROXY-CANARY"}


def _live_sets(names: set[str]) -> dict[str, set[str]]:
    proc = subprocess.run(["ipset", "save"], capture_output=True, text=True)
    out: dict[str, set[str]] = {}
    for line in proc.stdout.splitlines():
        words = line.split()
        if len(words) >= 2 and words[1] in names:
            if words[0] == "create":
                out.setdefault(words[1], set())
            elif words[0] == "add":
                out.setdefault(words[1], set()).add(words[2])
    return out


def _live(ipvs: IpvsSocket, keys) -> dict[tuple[str, str, int], tuple[Service, dict[RealServer, Dest]]]:
    """Live virtual servers (all, or those in `keys`) with their real servers."""
    if keys is not None and len(keys) <= 64:  # a few: ask for each one
        services = [svc for svc in (ipvs.service(Service(*key)) for key in keys) if svc is not None]
    else:
        services = [s for s in ipvs.services() if keys is None or (s.protocol, s.ip, s.port) in keys]
    return {(s.protocol, s.ip, s.port): (s, {RealServer(d.ip, d.port): d for d in ipvs.dests(s)}) for s in services}

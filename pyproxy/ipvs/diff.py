"""`pyproxy diff --backend ipvs`: the IPVS state this node should have against the live one.

Four sections, each compared as sorted lines: virtual and real servers (`ipvsadm-save -n`
form), the addresses on kube-ipvs0, the entries of our ipsets, and the rules of our iptables
chains. The expected iptables rules are put in iptables-save's own form by loading them (with
the ipsets they name) into a private namespace made for the purpose, as the iptables diff does.
"""

from __future__ import annotations

import difflib
import subprocess

from .. import netns
from ..xtables.client import XtablesClient
from ..netlink.ipvs import IpvsSocket
from ..netlink.route import Netlink
from .apply import IpvsBackend, _live, _live_sets, ensure_ip_vs
from .render import DUMMY_DEVICE, IpvsRuleset, VirtualServer


def live_servers() -> list[str]:
    with IpvsSocket() as ipvs:
        dumped = _live(ipvs, None)
    lines = []
    for svc, reals in dumped.values():
        lines += VirtualServer(svc.protocol, svc.ip, svc.port, svc.scheduler, svc.timeout, tuple(reals)).save_lines()
    return lines


def live_addresses(family: int) -> list[str]:
    with Netlink() as nl:
        link = nl.link(DUMMY_DEVICE)
        return [str(i.ip) for i in nl.addresses(link.index) if i.version == family] if link else []


def chain_rules(backend: XtablesClient, chains: dict[str, set[str]]) -> list[str]:
    live = backend.save("nat", "filter")
    return [f"{table}: {rule}" for table in ("nat", "filter") for rule in live[table].rules
            if rule.split()[1] in chains[table]]


def expected_rules(ruleset: IpvsRuleset, variant: str, chains: dict[str, set[str]]) -> list[str]:
    with netns.scratch():
        subprocess.run(["ipset", "restore", "-exist"], input="\n".join(
            line for line in ruleset.ipset_lines() if line.startswith("create ")) + "\n", text=True, check=True)
        backend = XtablesClient(ruleset.family, variant)
        backend.restore(ruleset.nat + ruleset.filter)
        return chain_rules(backend, chains)


def diff(ruleset: IpvsRuleset, variant: str = "auto") -> str:
    ensure_ip_vs()
    backend = IpvsBackend(ruleset.family, variant)
    chains = {"nat": {line[1:].split()[0] for line in ruleset.nat if line.startswith(":")},
              "filter": {line[1:].split()[0] for line in ruleset.filter if line.startswith(":")}}
    sets = ruleset.sets()
    live_set = _live_sets(set(sets))
    expected = (sorted(line for vs in ruleset.servers().values() for line in vs.save_lines())
                + sorted(f"address {ip}" for ip in ruleset.bind_addresses())
                + sorted(f"add {name} {e}" for name, entries in sets.items() for e in entries)
                + sorted(expected_rules(ruleset, backend.iptables.variant, chains)))
    live = (sorted(live_servers()) + sorted(f"address {ip}" for ip in live_addresses(ruleset.family))
            + sorted(f"add {name} {e}" for name, entries in live_set.items() for e in entries)
            + sorted(chain_rules(backend.iptables, chains)))
    return "".join(difflib.unified_diff([line + "\n" for line in expected], [line + "\n" for line in live],
                                        fromfile="expected (pyproxy dump --backend ipvs)",
                                        tofile="live (IPVS, kube-ipvs0, ipsets, iptables)"))

"""The three proxy modes behind one interface, so the proxier, the daemon and the CLI never branch
on the mode: each asks its `Mode` for a renderer, a kernel writer per IP family, a dump, a diff
against the live kernel, a tracer and the cleanup of what the mode leaves behind.

Backends are imported when a mode is first used: `pyproxy dump` in nftables mode never loads the
iptables writer, and the CLI starts fast.
"""

from __future__ import annotations

import logging
import os
from itertools import islice
from typing import Any, Iterable

from .backend import SyncError
from .config import ProxyConfig
from .view import NodeView

log = logging.getLogger("pyproxy")


class Mode:
    """What one proxy mode provides. Subclasses fill every method; none runs a tool on creation."""

    name = ""

    def check_node(self) -> None:
        """Fail at start-up, with a clear reason, on a node that cannot run this mode."""

    def unsupported(self, family: int, config: ProxyConfig) -> str:
        """Why this node's kernel cannot take this family's rules ("" when it can): probed with
        the mode's own tool, read-only."""
        return ""

    def renderer(self, config: ProxyConfig) -> Any:
        """The memoising renderer the proxier keeps between syncs."""
        raise NotImplementedError

    def rules(self, renderer: Any, view: NodeView, family: int) -> Any:
        """What the writer's sync takes, from the proxier's renderer."""
        return renderer.render(view, family)

    def writer(self, family: int, config: ProxyConfig) -> Any:
        """The kernel writer of one family: sync(rules, full) -> SyncResult, cleanup() -> count."""
        raise NotImplementedError

    def rule_counts(self, writer: Any) -> dict[str, int]:
        """Rules per table after a sync, for kubeproxy_sync_proxy_rules_iptables_total."""
        return {}

    def rules_written(self, writer: Any) -> dict[str, int]:
        """Rules per table the last sync wrote, for kubeproxy_sync_proxy_rules_iptables_last."""
        return {}

    def render(self, view: NodeView, config: ProxyConfig, family: int) -> Any:
        """A one-off ruleset (dump, diff, trace)."""
        return self.rules(self.renderer(config), view, family)

    def text(self, ruleset: Any) -> str:
        raise NotImplementedError

    def text_chunks(self, ruleset: Any) -> Iterable[str]:
        """The dump text in pieces, so a big one is written out without being joined first."""
        yield self.text(ruleset)

    def counts(self, ruleset: Any) -> dict[str, int]:
        raise NotImplementedError

    def diff(self, ruleset: Any, iptables_variant: str) -> tuple[str, str]:
        """(differences as text, "" when none; what was compared, e.g. "iptables-nft")."""
        raise NotImplementedError

    def tracer(self, ruleset: Any, view: NodeView, config: ProxyConfig, family: int) -> Any:
        """A tracer of new connections, or None where the kernel decides (IPVS scheduling)."""
        return None

    def clean_leftovers(self, families: Iterable[int], config: ProxyConfig, running: str) -> None:
        """Remove what this mode left on the node, now that mode `running` has its rules in place."""


class IptablesMode(Mode):
    name = "iptables"

    def renderer(self, config):
        from .iptables.render import Renderer

        return Renderer(config)

    def rules(self, renderer, view, family):
        # streamed to iptables-restore while it is produced (the writer consumes it once)
        return renderer.lazy(view, family)

    def render(self, view, config, family):
        from .iptables.render import render

        return render(view, config, family)

    def writer(self, family, config):
        from .iptables.apply import IptablesBackend

        return IptablesBackend(family, config.iptables_variant)

    def unsupported(self, family, config):
        return _probe([self.writer(family, config).save_tool, "-t", "nat"])

    def rule_counts(self, writer):
        return {table: writer.last_ruleset.rule_count(table) for table in ("filter", "nat")}

    def rules_written(self, writer):
        return dict(writer.last_rules_written)

    def text(self, ruleset):
        return ruleset.dump_text()

    def text_chunks(self, ruleset):
        lines = ruleset.dump_lines()
        while batch := list(islice(lines, 4096)):
            yield "\n".join(batch) + "\n"

    def counts(self, ruleset):
        return {"filter": ruleset.rule_count("filter"), "nat": ruleset.rule_count("nat")}

    def diff(self, ruleset, iptables_variant):
        from .iptables.diff import diff

        text, variant = diff(ruleset, iptables_variant)
        return text, f"iptables-{variant}"

    def tracer(self, ruleset, view, config, family):
        from .iptables.trace import Tracer

        return Tracer(ruleset, [str(ip) for ip in view.node_ips_of(family)])

    def clean_leftovers(self, families, config, running):
        if running == "ipvs":
            return  # IPVS mode's first full sync rewrites the chains the two modes share
        from .iptables.apply import IptablesBackend

        for family in families:
            for variant in ("legacy", "nft"):
                try:
                    IptablesBackend(family, variant).cleanup()
                except (SyncError, FileNotFoundError) as err:
                    log.warning("cleaning iptables-%s rules: %s", variant, err)


class NftablesMode(Mode):
    name = "nftables"

    def renderer(self, config):
        from .nftables.render import NftRenderer

        return NftRenderer(config, config.nftables_table)

    def writer(self, family, config):
        from .nftables.apply import NftablesBackend

        return NftablesBackend(family, config.nftables_table)

    def unsupported(self, family, config):
        # a dry run (-c) of creating the family's table: the kernel checks it, nothing is made
        return _probe(["nft", "-c", f"add table {'ip' if family == 4 else 'ip6'} {config.nftables_table}"])

    def text(self, ruleset):
        return ruleset.script()

    def counts(self, ruleset):
        return {"chains": sum(len(s.chains) for s in ruleset.services.values())}

    def diff(self, ruleset, iptables_variant):
        from .nftables.diff import diff

        return diff(ruleset), "nftables"

    def tracer(self, ruleset, view, config, family):
        from .nftables.trace import NftTracer
        from .view import node_port_ips

        chosen = node_port_ips(view, config, family)
        chosen = [str(ip) for ip in chosen] if chosen is not None else None
        return NftTracer(ruleset, [str(ip) for ip in view.node_ips_of(family)], chosen, view.service_ranges_of(family))

    def clean_leftovers(self, families, config, running):
        from .nftables.apply import NftablesBackend

        for family in families:
            try:
                NftablesBackend(family, config.nftables_table).cleanup()
            except (SyncError, FileNotFoundError) as err:
                log.warning("cleaning nftables rules: %s", err)


class IpvsMode(Mode):
    name = "ipvs"

    def check_node(self):
        from .ipvs.apply import ensure_ip_vs

        ensure_ip_vs()  # names the missing module, instead of failing at the first sync

    def renderer(self, config):
        from .ipvs.render import IpvsRenderer

        return IpvsRenderer(config)

    def writer(self, family, config):
        from .ipvs.apply import IpvsBackend

        return IpvsBackend(family, config.iptables_variant, config.ipvs_strict_arp, config.ipvs_exclude_cidrs)

    def unsupported(self, family, config):
        return MODES["iptables"].unsupported(family, config)  # IPVS mode's chains are iptables'

    def text(self, ruleset):
        return ruleset.text()

    def counts(self, ruleset):
        servers = ruleset.servers().values()
        return {"virtualServers": len(servers), "realServers": sum(len(vs.reals) for vs in servers)}

    def diff(self, ruleset, iptables_variant):
        from .ipvs.diff import diff

        return diff(ruleset, iptables_variant), "ipvs"

    def clean_leftovers(self, families, config, running):
        from .ipvs.render import DUMMY_DEVICE

        if not (os.path.exists("/proc/net/ip_vs") or os.path.exists(f"/sys/class/net/{DUMMY_DEVICE}")):
            return  # IPVS mode never ran here (without ip_vs there can be no virtual server)
        from .ipvs.apply import IpvsBackend

        for family in families:
            try:
                # iptables mode owns the chains the two share; nftables mode owns none of them
                IpvsBackend(family, config.iptables_variant).cleanup(keep_shared_chains=running != "nftables")
            except Exception as err:  # noqa: BLE001 - leftovers must not stop the proxy
                log.warning("cleaning IPVS leftovers: %s", err)


def _probe(argv: list[str]) -> str:
    """"" when the command succeeds, else its first line of complaint."""
    import subprocess

    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    if proc.returncode == 0:
        return ""
    return ((proc.stderr or proc.stdout).strip().splitlines() or [f"exit {proc.returncode}"])[0][:200]


MODES: dict[str, Mode] = {m.name: m for m in (IptablesMode(), NftablesMode(), IpvsMode())}


def mode(name: str) -> Mode:
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"mode {name!r} is not available; use {', '.join(MODES)}") from None

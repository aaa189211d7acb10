"""The `pyproxy` command line (click). Exit codes: 0 ok, 1 "different"/failed check, 2 error."""

from __future__ import annotations

import json
import os
import sys

import click
import yaml


def _print(data: object, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(data, indent=2))
    elif output == "yaml":
        click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyproxy")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "0+unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", prog_name="pyproxy", message="%(prog)s %(version)s")
def main() -> None:
    """pyproxy: a Kubernetes Service dataplane (kube-proxy replacement)."""
    # an argument that is not UTF-8 (`--node $'\xff'`) reaches us as a lone surrogate: echoing it
    # must not end in a traceback
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def entry() -> None:
    """The console script: invoked as `kube-proxy` (the image links it there, so a kube-proxy
    DaemonSet can switch only its image), the arguments are kube-proxy's, for `pyproxy run`."""
    if os.path.basename(sys.argv[0]) == "kube-proxy" and sys.argv[1:2] != ["--version"]:
        sys.argv.insert(1, "run")
    main()


# -- lab -------------------------------------------------------------------------------------------


@main.group()
def lab() -> None:
    """A cluster made of network namespaces on this machine."""


def _load_lab_spec(path: str | None) -> tuple[object, dict]:
    from .lab.spec import DEFAULT_SPEC, SpecError, parse_spec

    raw = DEFAULT_SPEC
    if path:
        with open(path) as f:
            raw = yaml.safe_load(f)
    try:
        return parse_spec(raw), raw
    except SpecError as err:
        raise click.ClickException(f"{path or 'built-in lab'}: {err}") from None


def _bring_up(path: str | None, control_plane: str | None = None):
    from .lab import Lab, LabError
    from .lab.controlplane import ControlPlaneError
    from .lab.spec import parse_spec
    from .lab.upstream import UpstreamError

    spec, raw = _load_lab_spec(path)
    if control_plane:
        raw = {**raw, "controlPlane": control_plane}
        spec = parse_spec(raw)
    try:
        return Lab(spec).up(raw)
    except (LabError, ControlPlaneError, UpstreamError) as err:
        raise click.ClickException(str(err)) from None


CONTROL_PLANE = click.option("--control-plane", type=click.Choice(["none", "kubernetes"]), default=None,
                             help="kubernetes: upstream's etcd, kube-apiserver and kube-controller-manager in the "
                                  "lab, pyproxy on every node against them (default: the lab file's, or none)")


@lab.command("up")
@click.option("-f", "--file", "path", type=click.Path(exists=True, dir_okay=False), help="lab YAML (default: built-in)")
@CONTROL_PLANE
def lab_up(path: str | None, control_plane: str | None) -> None:
    """Create the lab's nodes, pods and external client."""
    lab_ = _bring_up(path, control_plane)
    if lab_.cp:
        from .lab.proxies import deploy_pyproxy, start_pyproxy

        try:
            kube, config = deploy_pyproxy(lab_)
            for node in lab_.spec.nodes:
                start_pyproxy(lab_, node.name, kube, config)
        except Exception:
            lab_.down()
            raise
    _print_status(lab_.status())
    if lab_.cp:
        click.echo(f"  control plane   {lab_.cp.address:<15} {'kube-apiserver :6443':<21} netns {lab_.cp_ns}")
        click.echo(f"  kubeconfig      {lab_.cp.admin_kubeconfig}  (pyproxy lab kubectl --name "
                   f"{lab_.spec.name} -- get pods -A)")


@lab.command("kubectl", context_settings={"ignore_unknown_options": True})
@click.option("--name", default="demo", show_default=True)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def lab_kubectl(name: str, args: tuple[str, ...]) -> None:
    """upstream kubectl against a lab's control plane, as its admin: pyproxy lab kubectl -- get svc"""
    from .lab import Lab, LabError
    from .lab import upstream
    from .netns import netns_path

    try:
        lab_ = Lab.load(name)
    except LabError as err:
        raise click.ClickException(str(err)) from None
    if lab_.cp is None:
        raise click.ClickException(f"lab {name} has no control plane (pyproxy lab up --control-plane kubernetes)")
    os.execvp("nsenter", ["nsenter", f"--net={netns_path(lab_.cp_ns)}", upstream.binary("kubectl"),
                          f"--kubeconfig={lab_.cp.admin_kubeconfig}", *args])


@lab.command("build", context_settings={"ignore_unknown_options": True})
@click.argument("components", nargs=-1)
def lab_build(components: tuple[str, ...]) -> None:
    """Build upstream's programs from their Go modules into the cache (default: the control plane)."""
    from .lab import upstream

    try:
        click.echo(upstream.ensure(*components))
    except upstream.UpstreamError as err:
        raise click.ClickException(str(err)) from None


def _print_status(status: dict) -> None:
    click.echo(f"lab {status['name']}")
    for node in status["nodes"]:
        click.echo(f"  node {node['name']:<10} {node['ip']:<15} pods {node['podCIDR']:<16} netns {node['netns']}")
    click.echo(f"  external        {status['external']['ip']:<15} {'':<21} netns {status['external']['netns']}")
    for pod in status["pods"]:
        state = "serving" if pod["echo"] else "NOT SERVING"
        click.echo(f"  pod  {pod['name']:<10} {pod['ip']:<15} on {pod['node']:<18} {state}")


@lab.command("down")
@click.option("--name", default="demo", show_default=True)
def lab_down(name: str) -> None:
    """Remove everything of a lab (also a half-built or crashed one)."""
    from .lab import Lab

    removed = Lab.down_by_name(name)
    click.echo(f"removed {len(removed)} namespaces of lab {name}")


@lab.command("status")
@click.option("--name", default="demo", show_default=True)
@click.option("-o", "--output", type=click.Choice(["text", "json", "yaml"]), default="text")
def lab_status(name: str, output: str) -> None:
    """Show nodes, pods and whether their echo servers run."""
    from .lab import Lab, LabError

    try:
        status = Lab.load(name).status()
    except LabError as err:
        raise click.ClickException(str(err)) from None
    if output == "text":
        _print_status(status)
    else:
        _print(status, output)


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@click.option("--name", default="demo", show_default=True)
@click.argument("target")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def lab_exec(name: str, target: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside a pod, a node or "external": pyproxy lab exec web-1 -- ip addr"""
    from .lab import Lab, LabError

    try:
        ns = Lab.load(name).namespace_of(target)
    except LabError as err:
        raise click.ClickException(str(err)) from None
    os.execvp("ip", ["ip", "netns", "exec", ns, *command])


@lab.command("demo")
@click.option("-f", "--file", "path", type=click.Path(exists=True, dir_okay=False), help="lab YAML (default: built-in)")
@CONTROL_PLANE
def lab_demo(path: str | None, control_plane: str | None) -> None:
    """Bring a lab up, show traffic through it, and take it down again."""
    from .lab.demo import run_demo

    lab_ = _bring_up(path, control_plane)
    try:
        ok = run_demo(lab_, click.echo)
    finally:
        lab_.down()
    click.echo("lab removed")
    sys.exit(0 if ok else 1)


# -- the dataplane -----------------------------------------------------------------------------


def _ip_address(value: str, name: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise click.BadParameter(f"{value[:60]!r} is not an IP address", param_hint=name) from None


def _default_node() -> str:
    import socket

    return os.environ.get("NODE_NAME") or socket.gethostname()


def cluster_options(fn):
    fn = click.option("-f", "--filename", "path", required=True, type=click.Path(exists=True, dir_okay=False),
                      help="Kubernetes YAML/JSON: Services, EndpointSlices, Nodes")(fn)
    fn = click.option("--node", default=_default_node, show_default="$NODE_NAME or hostname",
                      help="the node whose rules to compute")(fn)
    fn = click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                      help="KubeProxyConfiguration file")(fn)
    fn = click.option("--backend", type=click.Choice(["iptables", "nftables", "ipvs"]), default=None,
                      help="dataplane backend (default: the config's mode)")(fn)
    fn = click.option("--family", type=click.Choice(["4", "6"]), default="4", show_default=True)(fn)
    fn = click.option("--cluster-cidr", default=None, help="overrides the config's clusterCIDR")(fn)
    return fn


def _setup(path, node, config_path, backend, cluster_cidr):
    """Load config and cluster; report invalid objects on stderr, one per line."""
    from .config import ConfigError, load_config, parse_config, with_mode_defaults
    from .sources.manifests import ManifestError, load_manifests

    try:
        config = load_config(config_path)
        if cluster_cidr:
            config = config.with_overrides(cluster_cidrs=parse_config({"clusterCIDR": cluster_cidr}).cluster_cidrs)
        if backend:
            config = config.with_overrides(mode=backend)
        config = with_mode_defaults(config)
        cluster = load_manifests(path)
    except (ConfigError, ManifestError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    for warning in config.warnings:
        click.echo(f"warning: config: {warning}", err=True)
    for error in cluster.errors:
        click.echo(f"skipped: {error}", err=True)
    return config, cluster


def _ruleset(config, cluster, node, family):
    from .modes import mode
    from .view import build_view

    view = build_view(cluster, node, primary_ip=config.bind_address)
    return view, mode(config.mode).render(view, config, int(family))


@main.command()
@cluster_options
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def dump(path, node, config_path, backend, family, cluster_cidr, output):
    """Print the rules NODE would get: iptables-save, nft -f or ipvsadm-save -n (with ipsets) format."""
    from .modes import mode

    config, cluster = _setup(path, node, config_path, backend, cluster_cidr)
    view, ruleset = _ruleset(config, cluster, node, family)
    chosen = mode(config.mode)
    if output == "json":
        _print({"node": node, "family": int(family), "backend": config.mode, "servicePorts": len(view.family(int(family))),
                "rules": chosen.counts(ruleset), "text": chosen.text(ruleset)}, "json")
    else:
        for chunk in chosen.text_chunks(ruleset):  # written as rendered, never joined whole
            sys.stdout.write(chunk)


@main.command("diff")
@cluster_options
@click.option("--iptables-variant", type=click.Choice(["auto", "legacy", "nft"]), default="auto", show_default=True)
def diff_cmd(path, node, config_path, backend, family, cluster_cidr, iptables_variant):
    """Compare the rules NODE should have with the live kernel's (exit 0 same, 1 different, 2 error)."""
    import subprocess

    from .backend import SyncError
    from .modes import mode

    config, cluster = _setup(path, node, config_path, backend, cluster_cidr)
    _, ruleset = _ruleset(config, cluster, node, family)
    try:
        text, variant = mode(config.mode).diff(ruleset, iptables_variant)
    except (SyncError, OSError, RuntimeError, subprocess.CalledProcessError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    if text:
        click.echo(text, nl=False)
        sys.exit(1)
    click.echo(f"no differences ({variant})")


@main.command()
@cluster_options
@click.option("--src", required=True, callback=lambda ctx, param, value: _ip_address(value, "--src"),
              help="source address of the packet")
@click.option("--dst", required=True, callback=lambda ctx, param, value: _ip_address(value, "--dst"),
              help="destination address")
@click.option("--dport", required=True, type=click.IntRange(1, 65535))
@click.option("--proto", type=click.Choice(["tcp", "udp", "sctp"]), default="tcp", show_default=True)
@click.option("--in-iface", default="", help="interface the packet arrives on (for detectLocalMode by interface)")
@click.option("--local", "local_origin", is_flag=True, help="the packet is sent by a process on the node")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def trace(path, node, config_path, backend, family, cluster_cidr, src, dst, dport, proto, in_iface,
          local_origin, output):
    """Follow a new connection through NODE's rules: where it can go, and the rules it crosses."""
    from .modes import mode
    from .tracing import Packet

    config, cluster = _setup(path, node, config_path, backend, cluster_cidr)
    view, ruleset = _ruleset(config, cluster, node, family)
    tracer = mode(config.mode).tracer(ruleset, view, config, int(family))
    if tracer is None:
        click.echo("error: trace follows iptables and nftables rules; IPVS scheduling is the kernel's "
                   f"(see `pyproxy dump --backend {config.mode}`)", err=True)
        sys.exit(2)
    local_origin = local_origin or src in [str(ip) for ip in view.node_ips_of(int(family))]
    outcomes = tracer.trace(Packet(src, dst, dport, proto, in_iface, local_origin))
    if output == "json":
        _print({"packet": {"src": src, "dst": dst, "dport": dport, "proto": proto, "localOrigin": local_origin},
                "outcomes": [o.to_json() for o in outcomes]}, "json")
        return
    click.echo(f"{proto} {src} -> {dst}:{dport} on node {node}{' (from the node itself)' if local_origin else ''}")
    for o in outcomes:
        click.echo(f"\n{o.probability:7.2%}  {o.describe()}")
        for rule in o.rules:
            click.echo(f"         {rule}")


class _KubeProxyCommandLine(click.Command):
    """`pyproxy run` parses kube-proxy's command line: an option without its value fails in
    kube-proxy's words (pflag's), exit 1."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.BadOptionUsage as err:
            if "requires an argument" not in err.message:
                raise
            click.echo(f"Error: flag needs an argument: {err.option_name}", err=True)
            ctx.exit(1)


@main.command(cls=_KubeProxyCommandLine, context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
              epilog="Also every other kube-proxy flag (--iptables-masquerade-bit, --conntrack-*, --ipvs-*, "
                     "--feature-gates, --nodeport-addresses, --master, ...: pyproxy/kubeproxyflags.py), used, as by "
                     "kube-proxy, when no --config file is given.")
@click.option("-f", "--filename", "path", type=click.Path(exists=True, dir_okay=False),
              help="follow a manifests file instead of the Kubernetes API")
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False),
              help="kubeconfig for the API (default: the in-cluster service account)")
@click.option("--node", "--hostname-override", "node", default="",
              help="this node's name (default: the config's hostnameOverride, $NODE_NAME, the hostname)")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), help="KubeProxyConfiguration file")
@click.option("--backend", "--proxy-mode", "backend", type=click.Choice(["iptables", "nftables", "ipvs"]), default=None)
@click.option("--family", type=click.Choice(["auto", "4", "6", "dual"]), default="auto", show_default=True,
              help="IP families to program (auto: those the Node has addresses or podCIDRs in, as the kernel allows)")
@click.option("--cluster-cidr", default=None, help="overrides the config's clusterCIDR")
@click.option("--iptables-variant", type=click.Choice(["auto", "legacy", "nft"]), default=None)
@click.option("--healthz-bind-address", default=None, help="host:port, '' to disable (default 0.0.0.0:10256)")
@click.option("--metrics-bind-address", default=None, help="host:port, '' to disable (default 127.0.0.1:10249)")
@click.option("--proxy-name", default="", help="serve only services labelled service.kubernetes.io/service-proxy-name=NAME")
@click.option("--once", is_flag=True, help="sync once and exit")
@click.option("--write-config-to", type=click.Path(dir_okay=False, writable=True),
              help="write the effective configuration (file, flags and defaults) there and exit")
@click.option("--v", "klog_v", type=click.IntRange(0, 10), default=None, help="log verbosity, as kube-proxy's --v")
@click.option("--cleanup", "cleanup_only", is_flag=True, help="remove every rule of ours (all modes) and exit")
@click.option("--init-only", is_flag=True, help="only the node setup (OOM score, conntrack sysctls), then exit")
@click.option("-v", "--verbose", count=True)
@click.pass_context
def run(ctx, path, kubeconfig, node, config_path, backend, family, cluster_cidr, iptables_variant, healthz_bind_address,
        metrics_bind_address, proxy_name, once, write_config_to, klog_v, cleanup_only, init_only, verbose):
    """Program this node's rules and keep them in step with the API (or a manifests file)."""
    import logging
    import signal

    from .config import ConfigError, load_config, parse_config, with_mode_defaults
    from .daemon import Daemon, node_name
    from .proxier import Proxier

    from .kubeproxyflags import FlagError, is_logging_flag
    from .kubeproxyflags import parse as parse_flags

    try:
        overlay, given = parse_flags(ctx.args)
    except FlagError as err:
        click.echo(f"Error: {err}", err=True)  # kube-proxy's words and exit status
        sys.exit(1)
    if given.get("version"):
        click.echo(f"pyproxy {_version()}")
        return
    try:
        if config_path:
            config = load_config(config_path)
            ignored = [f"--{name}" for name in given if name != "master" and not is_logging_flag(name)]
            if "logging-format" in given:  # kube-proxy's copyLogsFromFlags: logging flags win over the file
                config = config.with_overrides(log_format=parse_config({"logging": {"format": given["logging-format"]}})
                                               .log_format)
            if ignored:  # kube-proxy: the file wins over every flag but logging and --hostname-override
                click.echo(f"warning: {', '.join(ignored)} ignored: the --config file wins, as in kube-proxy", err=True)
        else:
            config = parse_config(overlay)
        if cluster_cidr:
            config = config.with_overrides(cluster_cidrs=parse_config({"clusterCIDR": cluster_cidr}).cluster_cidrs)
    except ConfigError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    for warning in config.warnings:
        click.echo(f"warning: config: {warning}", err=True)
    config = with_mode_defaults(config.with_overrides(
        mode=backend, iptables_variant=iptables_variant,
        healthz_bind_address=healthz_bind_address, metrics_bind_address=metrics_bind_address))
    # kube-proxy: --v counts like the config's logging.verbosity; 4 and up is debug
    level = max(klog_v or 0, config.verbosity, 4 if verbose > 1 else 0)
    logging.basicConfig(level=logging.DEBUG if level >= 4 else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if config.log_format == "json":
        from .logjson import JsonFormatter

        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    name = node_name(node, config)
    if write_config_to:
        from .config import effective_config

        with open(write_config_to, "w") as f:
            yaml.safe_dump(effective_config(config, name), f, sort_keys=False)
        click.echo(f"wrote the effective configuration to {write_config_to}", err=True)
        return
    if cleanup_only:
        ctx.invoke(cleanup, iptables_variant="both", nftables_table=config.nftables_table)
        return
    if init_only:
        from .nodesetup import apply_conntrack, set_oom_score_adj

        for problem in [set_oom_score_adj(config.oom_score_adj), *apply_conntrack(config)]:
            if problem:
                click.echo(f"warning: {problem}", err=True)
        click.echo("node setup done (--init-only)", err=True)
        return
    kubeconfig = kubeconfig or config.kubeconfig or None
    if kubeconfig and not path and not os.path.exists(kubeconfig):
        click.echo(f"error: kubeconfig {kubeconfig}: no such file", err=True)
        sys.exit(2)
    if path:
        from .sources.file import FileSource

        source, events = FileSource(path), None
    else:
        from .sources.events import EventRecorder
        from .sources.kube import KubeClient, KubeSource

        try:
            client = KubeClient(kubeconfig, master=given.get("master", ""))
        except Exception as err:  # noqa: BLE001 - a missing kubeconfig or service account
            click.echo(f"error: cannot configure the Kubernetes client: {err}", err=True)
            sys.exit(2)
        source = KubeSource(client, name, proxy_name)
        events = None if once else EventRecorder(client, name)
    families = None if family == "auto" else (4, 6) if family == "dual" else (int(family),)
    from .ipvs.apply import IpvsUnavailable

    try:
        proxier = Proxier(name, config, families, proxy_name)
    except IpvsUnavailable as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    from .nodesetup import (READ_ONLY_SYSFS, READ_ONLY_SYSFS_NOTE, apply_conntrack, conntrack_limits_blocked,
                            set_oom_score_adj)

    for problem in [set_oom_score_adj(config.oom_score_adj), *apply_conntrack(config)]:
        if problem:
            logging.getLogger("pyproxy").warning("%s; going on without it", problem)
    if conntrack_limits_blocked(config):
        logging.getLogger("pyproxy").warning("%s", READ_ONLY_SYSFS_NOTE)
        if events is not None:
            events.event("Warning", READ_ONLY_SYSFS, READ_ONLY_SYSFS_NOTE)
    daemon = Daemon(source, proxier, config, serve_http=not once, events=events, node_from_api=not path)
    if config_path and not once:
        from .daemon import exit_when_changed

        exit_when_changed(config_path, daemon)
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop())
    logging.getLogger("pyproxy").info("pyproxy starting on node %s (%s)", name, "file " + path if path else "API")
    sys.exit(daemon.run(once=once))


@main.command()
@click.option("--iptables-variant", type=click.Choice(["auto", "legacy", "nft", "both"]), default="both",
              show_default=True)
@click.option("--nftables-table", default="kube-proxy", show_default=True, help="the nftables table to drop")
def cleanup(iptables_variant, nftables_table):
    """Remove every rule, chain and table pyproxy installed (and nothing else), in this network namespace."""
    from .iptables.apply import ApplyError, IptablesBackend
    from .nftables.apply import NftablesBackend, NftError

    variants = ["legacy", "nft"] if iptables_variant == "both" else [iptables_variant]
    total = tables = 0
    for family in (4, 6):
        for variant in variants:
            try:
                total += IptablesBackend(family, variant).cleanup()
            except (ApplyError, FileNotFoundError) as err:
                click.echo(f"warning: {variant} ipv{family}: {err}", err=True)
        try:
            tables += NftablesBackend(family, nftables_table).cleanup()
        except (NftError, FileNotFoundError) as err:
            click.echo(f"warning: nftables ipv{family}: {err}", err=True)
    ipvs = 0
    if os.path.exists("/proc/net/ip_vs") or os.path.exists("/sys/class/net/kube-ipvs0"):
        from .ipvs.apply import IpvsBackend

        for family in (4, 6):
            for variant in variants:  # an ipset goes once no variant's rule uses it
                try:
                    ipvs += IpvsBackend(family, variant).cleanup()
                except Exception as err:  # noqa: BLE001 - report and go on with the others
                    click.echo(f"warning: ipvs ipv{family} ({variant}): {err}", err=True)
    click.echo(f"removed {total} chains and {tables} nftables tables" + (f" and {ipvs} IPVS objects" if ipvs else ""))


# -- DNS ---------------------------------------------------------------------------------------


@main.group("dns")
def dns_group() -> None:
    """The responder for the cluster zone (headless Services, SRV, PTR, ExternalName)."""


@dns_group.command("serve")
@click.option("-f", "--filename", "path", type=click.Path(exists=True, dir_okay=False),
              help="follow a manifests file instead of the Kubernetes API")
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False))
@click.option("--listen", default="0.0.0.0:53", show_default=True, help="ADDR:PORT, UDP and TCP")
@click.option("--zone", default="cluster.local", show_default=True)
@click.option("--ttl", default=5, show_default=True, type=click.IntRange(0, 86400))
def dns_serve(path, kubeconfig, listen, zone, ttl):
    """Answer for the cluster zone until stopped."""
    import logging
    import signal
    import threading

    from .dns.daemon import follow
    from .dns.server import DnsServer, Responder

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    host, _, port = listen.rpartition(":")
    try:
        port_number = int(port)
    except ValueError:
        raise click.BadParameter(f"expected ADDR:PORT, got {listen!r}", param_hint="--listen") from None
    if path:
        from .sources.file import FileSource

        source = FileSource(path)
    else:
        from .sources.kube import KubeClient, KubeSource

        source = KubeSource(KubeClient(kubeconfig), "", label_selector="")
    responder = Responder()
    try:
        server = DnsServer(responder, host.strip("[]") or "0.0.0.0", port_number).start()
    except OSError as err:
        click.echo(f"error: cannot listen on {listen}: {err.strerror}", err=True)
        sys.exit(2)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    logging.getLogger("pyproxy.dns").info("serving %s on %s:%d (UDP and TCP)", zone, server.host, server.port)
    follow(source, responder, zone, ttl, stop)
    server.stop()

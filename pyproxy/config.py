"""KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1): the fields that matter here.

Unknown fields produce warnings (a kube-proxy config file keeps working); invalid values fail
with the field path.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from .model.names import shown
from .model.types import IPNetwork

MODES = ("iptables", "nftables", "ipvs")
NODE_PORT_KEYWORDS = ("primary", "localhost", "all")  # kube-proxy 1.37's nodePortAddresses keywords
DETECT_LOCAL_MODES = ("ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|h|m|s)")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ProxyConfig:
    mode: str = "iptables"
    cluster_cidrs: tuple[IPNetwork, ...] = ()
    detect_local_mode: str = "ClusterCIDR"
    bridge_interface: str = ""
    interface_name_prefix: str = ""
    node_port_addresses: tuple[str, ...] = ()  # CIDRs, or primary, localhost, all; empty: all local addresses
    masquerade_bit: int = 14
    masquerade_all: bool = False
    localhost_node_ports: bool = True
    min_sync_period: float = 1.0
    sync_period: float = 30.0
    conntrack_max_per_core: int = 32768
    conntrack_min: int = 131072
    conntrack_udp_timeout: float = 0.0  # 0: leave the kernel's value
    conntrack_udp_stream_timeout: float = 0.0
    conntrack_tcp_established_timeout: float = 86400.0
    conntrack_tcp_close_wait_timeout: float = 3600.0
    conntrack_tcp_be_liberal: bool = False
    healthz_bind_address: str = "0.0.0.0:10256"
    metrics_bind_address: str = "127.0.0.1:10249"
    hostname_override: str = ""
    bind_address: str = ""  # bindAddress when specific: the node's primary IP, before the Node's own
    kubeconfig: str = ""  # clientConnection.kubeconfig ("" : --kubeconfig, else in-cluster)
    oom_score_adj: int = -999
    verbosity: int = 0
    log_format: str = "text"
    iptables_variant: str = "auto"  # pyproxy: legacy, nft or auto (follow the host)
    nftables_table: str = "kube-proxy"  # pyproxy: the nftables table's name (one per family)
    ipvs_scheduler: str = "rr"
    ipvs_strict_arp: bool = False
    ipvs_exclude_cidrs: tuple[IPNetwork, ...] = ()  # virtual servers in these are not ours to delete
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def masquerade_mark(self) -> str:
        return f"{1 << self.masquerade_bit:#x}"

    def with_overrides(self, **changes: Any) -> "ProxyConfig":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


MAX_PERIOD = 366 * 86400.0


def parse_duration(value: Any, path: str) -> float:
    """Go duration strings ("1s", "500ms", "1m30s") or plain seconds; finite and not negative."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0 or value > MAX_PERIOD:
            raise ConfigError(f"{path}: invalid duration {shown(value)} (0 to 366 days)")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{path}: invalid duration {shown(value)} (e.g. 1s, 500ms, 1m30s)")
    text = value.strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ConfigError(f"{path}: invalid duration {shown(value)} (e.g. 1s, 500ms, 1m30s)")
    scale = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


# Every field of KubeProxyConfiguration v1alpha1. Fields pyproxy applies are decoded below; the
# rest are warned about by name when set to anything but their zero value (kubeadm writes every
# field, most of them zero, and those must load silently).
_APPLIED = {
    "apiVersion", "kind", "metadata", "mode", "clusterCIDR", "detectLocalMode", "detectLocal", "nodePortAddresses",
    "iptables", "nftables", "ipvs", "conntrack", "healthzBindAddress", "metricsBindAddress", "hostnameOverride",
    "minSyncPeriod", "syncPeriod", "pyproxy", "clientConnection", "oomScoreAdj", "featureGates", "logging",
    "bindAddress",
}
_NOT_APPLIED = {
    "bindAddressHardFail": "pyproxy serves no proxy port to bind", "configSyncPeriod": "pyproxy watches without resync",
    "enableProfiling": "pyproxy has no pprof", "portRange": "the userspace proxy's, gone upstream too",
    "showHiddenMetricsForVersion": "pyproxy has no hidden metrics", "winkernel": "Windows only",
}
_KNOWN_IPVS = {"scheduler", "strictARP", "excludeCIDRs", "minSyncPeriod", "syncPeriod", "tcpTimeout",
               "tcpFinTimeout", "udpTimeout", "masqueradeAll"}
IPVS_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh")
_KNOWN_IPTABLES = {"masqueradeBit", "masqueradeAll", "localhostNodePorts", "minSyncPeriod", "syncPeriod"}
_KNOWN_NFTABLES = {"masqueradeBit", "masqueradeAll", "minSyncPeriod", "syncPeriod"}
_KNOWN_CONNTRACK = {"maxPerCore", "min", "tcpEstablishedTimeout", "tcpCloseWaitTimeout", "udpTimeout",
                    "udpStreamTimeout", "tcpBeLiberal"}
_KNOWN_CLIENT = {"kubeconfig", "qps", "burst", "contentType", "acceptContentTypes"}
# feature gates that change what a proxy does; pyproxy follows their default (GA) behaviour
KNOWN_GATES = {"TopologyAwareHints", "ServiceTrafficDistribution", "PreferSameTrafficDistribution",
               "KubeProxyDrainingTerminatingNodes", "MultiCIDRServiceAllocator", "NFTablesProxyMode",
               "LocalhostNodePorts", "ProxyTerminatingEndpoints", "IPv6DualStack"}
DEFAULT_HEALTHZ_PORT, DEFAULT_METRICS_PORT = 10256, 10249


def _zero(value: Any) -> bool:
    return value in (None, "", 0, False, "0s", "0") or value == [] or value == {}


def _section(raw: dict, key: str) -> dict:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping")
    return value


def _unknown(section: dict, prefix: str, known: set[str]) -> list[str]:
    return [f"{prefix}{k}: unknown field, ignored" for k in sorted(set(section) - known)]


def bind_address(value: Any, path: str, default: str, default_port: int) -> str:
    """kube-proxy's defaulting of a bind address: "" -> the default, a bare IP -> IP:default port;
    otherwise host:port with a valid port."""
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise ConfigError(f"{path}: expected host:port, got {shown(value)}")
    text = value.strip()
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
        return f"[{ip}]:{default_port}" if ip.version == 6 else f"{ip}:{default_port}"
    except ValueError:
        pass
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{path}: expected host:port with a port 0-65535, got {shown(value)}")
    if host.strip("[]"):
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise ConfigError(f"{path}: {shown(host)} is not an IP address") from None
    return text


def _duration_or_default(source: dict, key: str, path: str, default: float | None) -> float | None:
    """A duration where zero or null means kube-proxy's default."""
    value = source.get(key)
    if _zero(value):
        return default
    seconds = parse_duration(value, path)
    return seconds if seconds > 0 else default


def _bit(section: dict, path: str) -> int:
    bit = section.get("masqueradeBit")
    if bit is None:
        return 14
    if isinstance(bit, bool) or not isinstance(bit, int) or not 0 <= bit <= 31:
        raise ConfigError(f"{path}.masqueradeBit: must be 0-31, got {shown(bit)}")
    return bit


def _flag(section: dict, key: str, path: str, default: bool) -> bool:
    value = section.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{path}.{key}: expected true or false, got {shown(value)}")
    return value


def _cidr(text: Any, path: str) -> IPNetwork:
    """A CIDR, or an error that names the field and shows the value cut short (never echoed whole)."""
    try:
        return ipaddress.ip_network(text if isinstance(text, str) else "")
    except ValueError:
        raise ConfigError(f"{path}: invalid CIDR {shown(text)}") from None


def parse_config(raw: Any) -> ProxyConfig:
    """Decode as kube-proxy does: null, empty and zero fields take kube-proxy's defaults."""
    if raw is None:
        return ProxyConfig()
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a KubeProxyConfiguration mapping")
    if raw.get("kind", "KubeProxyConfiguration") != "KubeProxyConfiguration":
        raise ConfigError(f"kind: expected KubeProxyConfiguration, got {shown(raw.get('kind'))}")
    warnings = [f"{k}: unknown field, ignored" for k in sorted(set(raw) - _APPLIED - set(_NOT_APPLIED))]
    warnings += [f"{k}: not applied ({why})" for k, why in sorted(_NOT_APPLIED.items()) if not _zero(raw.get(k))
                 and not (k == "winkernel" and all(_zero(v) for v in (raw.get(k) or {}).values()))]
    out: dict[str, Any] = {}

    mode = raw.get("mode") or "iptables"
    if mode not in MODES:
        raise ConfigError(f"mode: must be one of {', '.join(MODES)}, got {shown(mode)}")
    out["mode"] = mode
    cidrs = []
    cluster_cidr = raw.get("clusterCIDR") or ""
    if not isinstance(cluster_cidr, str):
        raise ConfigError(f"clusterCIDR: expected a string, got {shown(cluster_cidr)}")
    for i, text in enumerate(c.strip() for c in cluster_cidr.split(",") if c.strip()):
        cidrs.append(_cidr(text, f"clusterCIDR[{i}]"))
    out["cluster_cidrs"] = tuple(cidrs)
    detect = raw.get("detectLocalMode") or "ClusterCIDR"
    if detect not in DETECT_LOCAL_MODES:
        raise ConfigError(f"detectLocalMode: must be one of {', '.join(DETECT_LOCAL_MODES)}, got {shown(detect)}")
    out["detect_local_mode"] = detect
    local = _section(raw, "detectLocal")
    for key, name in (("bridgeInterface", "bridge_interface"), ("interfaceNamePrefix", "interface_name_prefix")):
        value = local.get(key) or ""
        if not isinstance(value, str):
            raise ConfigError(f"detectLocal.{key}: expected a string, got {shown(value)}")
        out[name] = value
    if detect == "BridgeInterface" and not out["bridge_interface"]:
        raise ConfigError("detectLocal.bridgeInterface: required with detectLocalMode BridgeInterface")
    if detect == "InterfaceNamePrefix" and not out["interface_name_prefix"]:
        raise ConfigError("detectLocal.interfaceNamePrefix: required with detectLocalMode InterfaceNamePrefix")
    npa = raw.get("nodePortAddresses") or []
    if not isinstance(npa, list):
        raise ConfigError("nodePortAddresses: expected a list")
    for i, value in enumerate(npa):
        if not isinstance(value, str):
            raise ConfigError(f"nodePortAddresses[{i}]: expected a CIDR or primary, localhost, all, got {shown(value)}")
        if value not in NODE_PORT_KEYWORDS:
            _cidr(value, f"nodePortAddresses[{i}]")
    out["node_port_addresses"] = tuple(npa)

    # The mode's own section gives masquerading and sync periods (kube-proxy reads iptables.* in
    # iptables mode, nftables.* in nftables mode, ipvs.* in IPVS mode); top-level periods win.
    ipt = _section(raw, "iptables")
    nft = _section(raw, "nftables")
    ipvs = _section(raw, "ipvs")
    warnings += _unknown(ipt, "iptables.", _KNOWN_IPTABLES) + _unknown(nft, "nftables.", _KNOWN_NFTABLES)
    warnings += _unknown(ipvs, "ipvs.", _KNOWN_IPVS)
    own = {"iptables": ipt, "nftables": nft, "ipvs": ipt}[mode]  # IPVS mode masquerades with iptables.*
    path = "iptables" if mode == "ipvs" else mode
    out["masquerade_bit"] = _bit(own, path)
    _bit(ipt, "iptables")  # validated in every mode
    out["masquerade_all"] = _flag(own, "masqueradeAll", path, False) or (
        mode == "ipvs" and _flag(ipvs, "masqueradeAll", "ipvs", False))
    _flag(ipt, "masqueradeAll", "iptables", False)
    out["localhost_node_ports"] = _flag(ipt, "localhostNodePorts", "iptables", True)
    periods = {"iptables": ipt, "nftables": nft, "ipvs": ipvs}[mode]
    for key, name, default in (("minSyncPeriod", "min_sync_period", 0.0 if mode == "ipvs" else 1.0),
                               ("syncPeriod", "sync_period", 30.0)):
        value = _duration_or_default(periods, key, f"{mode}.{key}", default)
        for section, section_path in ((ipt, "iptables"), (nft, "nftables"), (ipvs, "ipvs")):
            _duration_or_default(section, key, f"{section_path}.{key}", default)  # validated in every mode
        out[name] = _duration_or_default(raw, key, key, value)
    for key, name in (("minSyncPeriod", "min_sync_period"), ("syncPeriod", "sync_period")):
        if not math.isfinite(out[name]) or out[name] > MAX_PERIOD:
            raise ConfigError(f"{mode}.{key}: must be at most {MAX_PERIOD / 86400:.0f} days, got {out[name]!r}")

    warnings += [f"ipvs.{k}: not supported by pyproxy, ignored" for k in ("tcpTimeout", "tcpFinTimeout", "udpTimeout")
                 if not _zero(ipvs.get(k))]
    if ipvs.get("scheduler"):
        if ipvs["scheduler"] not in IPVS_SCHEDULERS:
            raise ConfigError(f"ipvs.scheduler: must be one of {', '.join(IPVS_SCHEDULERS)}, got {shown(ipvs['scheduler'])}")
        out["ipvs_scheduler"] = ipvs["scheduler"]
    out["ipvs_strict_arp"] = _flag(ipvs, "strictARP", "ipvs", False)
    excluded = []
    excludes = ipvs.get("excludeCIDRs") or []
    if not isinstance(excludes, list):
        raise ConfigError("ipvs.excludeCIDRs: expected a list of CIDRs")
    for i, text in enumerate(excludes):
        excluded.append(_cidr(text, f"ipvs.excludeCIDRs[{i}]"))
    out["ipvs_exclude_cidrs"] = tuple(excluded)

    ct = _section(raw, "conntrack")
    warnings += _unknown(ct, "conntrack.", _KNOWN_CONNTRACK)
    for key, name, default in (("maxPerCore", "conntrack_max_per_core", 32768), ("min", "conntrack_min", 131072)):
        value = ct.get(key)
        if value is None:
            out[name] = default
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"conntrack.{key}: expected a number >= 0, got {shown(value)}")
        else:
            out[name] = value
    for key, name, default in (("tcpEstablishedTimeout", "conntrack_tcp_established_timeout", 86400.0),
                               ("tcpCloseWaitTimeout", "conntrack_tcp_close_wait_timeout", 3600.0)):
        # null: the default; an explicit 0s: leave the kernel's value (kube-proxy's rule)
        out[name] = default if ct.get(key) is None else parse_duration(ct[key], f"conntrack.{key}")
    for key, name in (("udpTimeout", "conntrack_udp_timeout"), ("udpStreamTimeout", "conntrack_udp_stream_timeout")):
        out[name] = parse_duration(ct[key], f"conntrack.{key}") if not _zero(ct.get(key)) else 0.0
    out["conntrack_tcp_be_liberal"] = _flag(ct, "tcpBeLiberal", "conntrack", False)

    out["healthz_bind_address"] = bind_address(raw.get("healthzBindAddress"), "healthzBindAddress",
                                               f"0.0.0.0:{DEFAULT_HEALTHZ_PORT}", DEFAULT_HEALTHZ_PORT)
    out["metrics_bind_address"] = bind_address(raw.get("metricsBindAddress"), "metricsBindAddress",
                                               f"127.0.0.1:{DEFAULT_METRICS_PORT}", DEFAULT_METRICS_PORT)
    hostname = raw.get("hostnameOverride") or ""
    if not isinstance(hostname, str):
        raise ConfigError(f"hostnameOverride: expected a string, got {shown(hostname)}")
    out["hostname_override"] = hostname
    bind = raw.get("bindAddress") or ""
    if bind and bind not in ("0.0.0.0", "::"):  # kube-proxy: a specific address is the primary node IP
        try:
            out["bind_address"] = str(ipaddress.ip_address(bind if isinstance(bind, str) else ""))
        except ValueError:
            raise ConfigError(f"bindAddress: {shown(bind)} is not an IP address") from None
    oom = raw.get("oomScoreAdj")
    if oom is not None:
        if isinstance(oom, bool) or not isinstance(oom, int) or not -1000 <= oom <= 1000:
            raise ConfigError(f"oomScoreAdj: must be -1000 to 1000, got {shown(oom)}")
        out["oom_score_adj"] = oom

    client = _section(raw, "clientConnection")
    warnings += _unknown(client, "clientConnection.", _KNOWN_CLIENT)
    kubeconfig = client.get("kubeconfig") or ""
    if not isinstance(kubeconfig, str):
        raise ConfigError(f"clientConnection.kubeconfig: expected a path, got {shown(kubeconfig)}")
    out["kubeconfig"] = kubeconfig
    warnings += [f"clientConnection.{k}: not applied (pyproxy asks for JSON and does not rate-limit its watches)"
                 for k in ("qps", "burst", "contentType", "acceptContentTypes") if not _zero(client.get(k))]
    gates = _section(raw, "featureGates")
    warnings += [f"featureGates.{g}: not a gate that changes pyproxy, ignored" for g in sorted(gates)
                 if g not in KNOWN_GATES]
    logging_ = _section(raw, "logging")
    verbosity = logging_.get("verbosity")
    if verbosity is not None:
        if isinstance(verbosity, bool) or not isinstance(verbosity, int) or verbosity < 0:
            raise ConfigError(f"logging.verbosity: expected a number >= 0, got {shown(verbosity)}")
        out["verbosity"] = verbosity
    log_format = logging_.get("format") or "text"
    if log_format not in ("text", "json"):
        raise ConfigError(f"logging.format: must be text or json, got {shown(log_format)}")
    out["log_format"] = log_format

    ours = _section(raw, "pyproxy")
    if ours.get("iptablesVariant") is not None:
        if ours["iptablesVariant"] not in ("auto", "legacy", "nft"):
            raise ConfigError(f"pyproxy.iptablesVariant: must be auto, legacy or nft, got {shown(ours['iptablesVariant'])}")
        out["iptables_variant"] = ours["iptablesVariant"]
    if ours.get("nftablesTable") is not None:
        name = ours["nftablesTable"]
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", name):
            raise ConfigError(f"pyproxy.nftablesTable: a name of letters, digits, - and _, got {shown(name)}")
        out["nftables_table"] = name
    return ProxyConfig(**out, warnings=tuple(warnings))


def with_mode_defaults(config: ProxyConfig) -> ProxyConfig:
    """kube-proxy's platformApplyDefaults, applied once the mode is final (after --proxy-mode):
    nftables mode with nodePortAddresses unset takes NodePorts on the primary addresses only."""
    if config.mode == "nftables" and not config.node_port_addresses:
        return config.with_overrides(node_port_addresses=("primary",))
    return config


def load_config(path: str | None) -> ProxyConfig:
    if not path:
        return ProxyConfig()
    with open(path) as f:
        try:
            return parse_config(yaml.safe_load(f))
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())[:200]}") from None


def effective_config(config: ProxyConfig, node_name: str = "") -> dict[str, Any]:
    """The configuration in effect, as a KubeProxyConfiguration (what --write-config-to writes)."""
    def duration(seconds: float) -> str:
        return f"{seconds:g}s"

    section = {"masqueradeBit": config.masquerade_bit, "masqueradeAll": config.masquerade_all,
               "minSyncPeriod": duration(config.min_sync_period), "syncPeriod": duration(config.sync_period)}
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "mode": config.mode, "clusterCIDR": ",".join(map(str, config.cluster_cidrs)),
        "detectLocalMode": config.detect_local_mode,
        "detectLocal": {"bridgeInterface": config.bridge_interface, "interfaceNamePrefix": config.interface_name_prefix},
        "nodePortAddresses": list(config.node_port_addresses) or None,
        "iptables" if config.mode != "nftables" else "nftables": (
            {**section, "localhostNodePorts": config.localhost_node_ports} if config.mode != "nftables" else section),
        "ipvs": {"scheduler": config.ipvs_scheduler, "strictARP": config.ipvs_strict_arp,
                 "excludeCIDRs": [str(c) for c in config.ipvs_exclude_cidrs] or None},
        "conntrack": {"maxPerCore": config.conntrack_max_per_core, "min": config.conntrack_min,
                      "tcpEstablishedTimeout": duration(config.conntrack_tcp_established_timeout),
                      "tcpCloseWaitTimeout": duration(config.conntrack_tcp_close_wait_timeout),
                      "tcpBeLiberal": config.conntrack_tcp_be_liberal,
                      "udpTimeout": duration(config.conntrack_udp_timeout),
                      "udpStreamTimeout": duration(config.conntrack_udp_stream_timeout)},
        "healthzBindAddress": config.healthz_bind_address, "metricsBindAddress": config.metrics_bind_address,
        "hostnameOverride": node_name or config.hostname_override, "bindAddress": config.bind_address or "0.0.0.0",
        "clientConnection": {"kubeconfig": config.kubeconfig},
        "oomScoreAdj": config.oom_score_adj,
        "logging": {"verbosity": config.verbosity, "format": config.log_format},
        "pyproxy": {"iptablesVariant": config.iptables_variant, "nftablesTable": config.nftables_table},
    }

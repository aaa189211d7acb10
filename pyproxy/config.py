"""KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1): the fields that matter here.

Unknown fields produce warnings (a kube-proxy config file keeps working); invalid values fail
with the field path.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from .model.types import IPNetwork

MODES = ("iptables", "nftables", "ipvs")
DETECT_LOCAL_MODES = ("ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ProxyConfig:
    mode: str = "iptables"
    cluster_cidrs: tuple[IPNetwork, ...] = ()
    detect_local_mode: str = "ClusterCIDR"
    bridge_interface: str = ""
    interface_name_prefix: str = ""
    node_port_addresses: tuple[str, ...] = ()  # CIDRs, or "primary"; empty: all local addresses
    masquerade_bit: int = 14
    masquerade_all: bool = False
    localhost_node_ports: bool = True
    min_sync_period: float = 1.0
    sync_period: float = 30.0
    conntrack_udp_timeout: float = 0.0
    conntrack_tcp_established_timeout: float = 86400.0
    conntrack_tcp_close_wait_timeout: float = 3600.0
    healthz_bind_address: str = "0.0.0.0:10256"
    metrics_bind_address: str = "127.0.0.1:10249"
    hostname_override: str = ""
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


def parse_duration(value: Any, path: str) -> float:
    """Go duration strings ("1s", "500ms", "1m30s") or plain seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ConfigError(f"{path}: invalid duration {value!r} (e.g. 1s, 500ms, 1m30s)")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


_KNOWN = {
    "apiVersion", "kind", "mode", "clusterCIDR", "detectLocalMode", "detectLocal", "nodePortAddresses",
    "iptables", "conntrack", "healthzBindAddress", "metricsBindAddress", "hostnameOverride", "minSyncPeriod",
    "syncPeriod", "pyproxy", "ipvs",
}
_KNOWN_IPVS = {"scheduler", "strictARP", "excludeCIDRs", "minSyncPeriod", "syncPeriod", "tcpTimeout",
               "tcpFinTimeout", "udpTimeout"}
IPVS_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh")
_KNOWN_IPTABLES = {"masqueradeBit", "masqueradeAll", "localhostNodePorts", "minSyncPeriod", "syncPeriod"}
_KNOWN_CONNTRACK = {"maxPerCore", "min", "tcpEstablishedTimeout", "tcpCloseWaitTimeout", "udpTimeout",
                    "udpStreamTimeout", "tcpBeLiberal"}


def parse_config(raw: Any) -> ProxyConfig:
    if raw is None:
        return ProxyConfig()
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a KubeProxyConfiguration mapping")
    if raw.get("kind", "KubeProxyConfiguration") != "KubeProxyConfiguration":
        raise ConfigError(f"kind: expected KubeProxyConfiguration, got {raw.get('kind')!r}")
    warnings = [f"{k}: unknown field, ignored" for k in sorted(set(raw) - _KNOWN)]
    out: dict[str, Any] = {}

    mode = raw.get("mode") or "iptables"
    if mode not in MODES:
        raise ConfigError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
    out["mode"] = mode
    cidrs = []
    for i, text in enumerate(c.strip() for c in str(raw.get("clusterCIDR") or "").split(",") if c.strip()):
        try:
            cidrs.append(ipaddress.ip_network(text))
        except ValueError as err:
            raise ConfigError(f"clusterCIDR[{i}]: {err}") from None
    out["cluster_cidrs"] = tuple(cidrs)
    detect = raw.get("detectLocalMode") or "ClusterCIDR"
    if detect not in DETECT_LOCAL_MODES:
        raise ConfigError(f"detectLocalMode: must be one of {', '.join(DETECT_LOCAL_MODES)}, got {detect!r}")
    out["detect_local_mode"] = detect
    local = raw.get("detectLocal") or {}
    out["bridge_interface"] = str(local.get("bridgeInterface") or "")
    out["interface_name_prefix"] = str(local.get("interfaceNamePrefix") or "")
    if detect == "BridgeInterface" and not out["bridge_interface"]:
        raise ConfigError("detectLocal.bridgeInterface: required with detectLocalMode BridgeInterface")
    if detect == "InterfaceNamePrefix" and not out["interface_name_prefix"]:
        raise ConfigError("detectLocal.interfaceNamePrefix: required with detectLocalMode InterfaceNamePrefix")
    npa = raw.get("nodePortAddresses") or []
    if not isinstance(npa, list):
        raise ConfigError("nodePortAddresses: expected a list")
    for i, value in enumerate(npa):
        if value != "primary":
            try:
                ipaddress.ip_network(value)
            except ValueError as err:
                raise ConfigError(f"nodePortAddresses[{i}]: {err}") from None
    out["node_port_addresses"] = tuple(str(v) for v in npa)

    ipt = raw.get("iptables") or {}
    if not isinstance(ipt, dict):
        raise ConfigError("iptables: expected a mapping")
    warnings += [f"iptables.{k}: unknown field, ignored" for k in sorted(set(ipt) - _KNOWN_IPTABLES)]
    bit = ipt.get("masqueradeBit", 14)
    if isinstance(bit, bool) or not isinstance(bit, int) or not 0 <= bit <= 31:
        raise ConfigError(f"iptables.masqueradeBit: must be 0-31, got {bit!r}")
    out["masquerade_bit"] = bit
    for key, name in (("masqueradeAll", "masquerade_all"), ("localhostNodePorts", "localhost_node_ports")):
        if key in ipt:
            if not isinstance(ipt[key], bool):
                raise ConfigError(f"iptables.{key}: expected true or false, got {ipt[key]!r}")
            out[name] = ipt[key]
    for key, name in (("minSyncPeriod", "min_sync_period"), ("syncPeriod", "sync_period")):
        for where, source in ((key, raw), (f"iptables.{key}", ipt)):
            if source.get(key) is not None:
                out[name] = parse_duration(source[key], where)
    if out.get("sync_period", 30.0) <= 0:
        raise ConfigError("syncPeriod: must be greater than 0")

    ipvs = raw.get("ipvs") or {}
    if not isinstance(ipvs, dict):
        raise ConfigError("ipvs: expected a mapping")
    warnings += [f"ipvs.{k}: unknown field, ignored" for k in sorted(set(ipvs) - _KNOWN_IPVS)]
    warnings += [f"ipvs.{k}: not supported by pyproxy, ignored" for k in ("tcpTimeout", "tcpFinTimeout", "udpTimeout")
                 if ipvs.get(k)]
    if ipvs.get("scheduler"):
        if ipvs["scheduler"] not in IPVS_SCHEDULERS:
            raise ConfigError(f"ipvs.scheduler: must be one of {', '.join(IPVS_SCHEDULERS)}, got {ipvs['scheduler']!r}")
        out["ipvs_scheduler"] = ipvs["scheduler"]
    if "strictARP" in ipvs:
        if not isinstance(ipvs["strictARP"], bool):
            raise ConfigError(f"ipvs.strictARP: expected true or false, got {ipvs['strictARP']!r}")
        out["ipvs_strict_arp"] = ipvs["strictARP"]
    excluded = []
    for i, text in enumerate(ipvs.get("excludeCIDRs") or []):
        try:
            excluded.append(ipaddress.ip_network(text))
        except ValueError as err:
            raise ConfigError(f"ipvs.excludeCIDRs[{i}]: {err}") from None
    out["ipvs_exclude_cidrs"] = tuple(excluded)
    if out.get("mode") == "ipvs":
        for key, name in (("minSyncPeriod", "min_sync_period"), ("syncPeriod", "sync_period")):
            if ipvs.get(key) is not None:
                out[name] = parse_duration(ipvs[key], f"ipvs.{key}")

    ct = raw.get("conntrack") or {}
    if not isinstance(ct, dict):
        raise ConfigError("conntrack: expected a mapping")
    warnings += [f"conntrack.{k}: unknown field, ignored" for k in sorted(set(ct) - _KNOWN_CONNTRACK)]
    for key, name in (("udpTimeout", "conntrack_udp_timeout"),
                      ("tcpEstablishedTimeout", "conntrack_tcp_established_timeout"),
                      ("tcpCloseWaitTimeout", "conntrack_tcp_close_wait_timeout")):
        if ct.get(key) is not None:
            out[name] = parse_duration(ct[key], f"conntrack.{key}")
    for key, name in (("healthzBindAddress", "healthz_bind_address"), ("metricsBindAddress", "metrics_bind_address"),
                      ("hostnameOverride", "hostname_override")):
        if raw.get(key) is not None:
            out[name] = str(raw[key])
    ours = raw.get("pyproxy") or {}
    if ours.get("iptablesVariant") is not None:
        if ours["iptablesVariant"] not in ("auto", "legacy", "nft"):
            raise ConfigError(f"pyproxy.iptablesVariant: must be auto, legacy or nft, got {ours['iptablesVariant']!r}")
        out["iptables_variant"] = ours["iptablesVariant"]
    if ours.get("nftablesTable") is not None:
        name = ours["nftablesTable"]
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", name):
            raise ConfigError(f"pyproxy.nftablesTable: a name of letters, digits, - and _, got {name!r}")
        out["nftables_table"] = name
    return ProxyConfig(**out, warnings=tuple(warnings))


def load_config(path: str | None) -> ProxyConfig:
    if not path:
        return ProxyConfig()
    with open(path) as f:
        try:
            return parse_config(yaml.safe_load(f))
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None

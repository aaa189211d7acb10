"""Parse and validate a CNI invocation: the CNI_* environment and the network configuration.

Everything that can be rejected is rejected here, before the plugin touches a namespace, a link
or an address file: a bad invocation creates nothing.

Records are NamedTuples rather than dataclasses: building a dataclass costs about 2 ms at import,
and this module is on the path of every pod start.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Mapping, NamedTuple

from .errors import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    CniError,
)

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
IFNAMSIZ = 16  # the kernel's limit, including the terminating NUL
_CONTAINER_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_KNOWN_ARGS = {"IgnoreUnknown", "IP", "K8S_POD_NAMESPACE", "K8S_POD_NAME",
               "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"}

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Env(NamedTuple):
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = {}
    path: tuple[str, ...] = ()


NETWORK_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")


def validate_ifname(name: str) -> None:
    if not name:
        raise CniError(INVALID_ENVIRONMENT, "interface name is empty")
    if len(name.encode("utf-8", "surrogateescape")) >= IFNAMSIZ:  # the kernel counts bytes
        raise CniError(INVALID_ENVIRONMENT, f"interface name is too long: {name!r} has "
                       f"{len(name.encode('utf-8', 'surrogateescape'))} bytes, the limit is {IFNAMSIZ - 1}")
    if name in (".", "..") or any(c in name for c in "/: \t\n\0"):
        raise CniError(INVALID_ENVIRONMENT, f"interface name contains an invalid character: {name!r}")


def parse_env(environ: Mapping[str, str]) -> Env:
    # The spec: an empty variable is the same as an absent one.
    get = lambda key: environ.get(key) or ""  # noqa: E731
    command = get("CNI_COMMAND")
    if not command:
        raise CniError(INVALID_ENVIRONMENT, "required env variable CNI_COMMAND missing")
    if command not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {command!r}")
    env = Env(
        command=command,
        container_id=get("CNI_CONTAINERID"),
        netns=get("CNI_NETNS"),
        ifname=get("CNI_IFNAME"),
        args=parse_args(get("CNI_ARGS")),
        path=tuple(p for p in get("CNI_PATH").split(":") if p),
    )
    required = {"ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
                "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
                "DEL": ("CNI_CONTAINERID", "CNI_IFNAME")}.get(command, ())
    for key in required:
        if not get(key):
            raise CniError(INVALID_ENVIRONMENT, f"required env variable {key} missing")
    if env.container_id and not _CONTAINER_ID.match(env.container_id):
        raise CniError(INVALID_ENVIRONMENT, f"invalid characters in container id: {env.container_id!r}")
    if env.ifname:
        validate_ifname(env.ifname)
    return env


def parse_args(raw: str) -> dict[str, str]:
    """CNI_ARGS: `K=V;K=V`. Unknown keys fail unless IgnoreUnknown is true, as in the reference."""
    out: dict[str, str] = {}
    for pair in filter(None, raw.split(";")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: invalid pair {pair!r}")
        out[key] = value
    ignore = out.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = sorted(set(out) - _KNOWN_ARGS)
    if unknown and not ignore:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: unknown args {unknown}")
    return out


class Route(NamedTuple):
    dst: IPNetwork
    gw: IPAddress | None = None


class Range(NamedTuple):
    subnet: IPNetwork
    start: IPAddress
    end: IPAddress
    gateway: IPAddress

    def __contains__(self, ip: IPAddress) -> bool:
        return ip.version == self.subnet.version and self.start <= ip <= self.end


class HostLocalConf(NamedTuple):
    ranges: tuple[tuple[Range, ...], ...]  # one address is taken from each range set
    routes: tuple[Route, ...]
    data_dir: str


class BridgeConf(NamedTuple):
    cni_version: str
    name: str
    bridge: str = "cni0"
    is_gateway: bool = False
    is_default_gateway: bool = False
    force_address: bool = False
    ip_masq: bool = False
    mtu: int = 0
    hairpin_mode: bool = False
    promisc_mode: bool = False
    ipam: Mapping[str, Any] = {}
    host_local: HostLocalConf | None = None
    dns: Mapping[str, Any] = {}
    prev_result: Mapping[str, Any] | None = None
    raw: Mapping[str, Any] = {}


def decode(stdin: bytes) -> dict[str, Any]:
    try:
        conf = json.loads(stdin or b"null")
    except (ValueError, UnicodeDecodeError) as err:
        raise CniError(DECODE_FAILURE, f"failed to decode network configuration: {err}") from None
    except RecursionError:
        raise CniError(DECODE_FAILURE, "failed to decode network configuration: nested too deeply") from None
    if not isinstance(conf, dict):
        raise CniError(DECODE_FAILURE, "network configuration must be a JSON object")
    return conf


def check_version(conf: Mapping[str, Any]) -> str:
    version = conf.get("cniVersion", "0.1.0")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f"config is {version!r}, plugin supports {list(SUPPORTED_VERSIONS)}")
    return version


def _typed(conf: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = conf.get(key, default)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise CniError(INVALID_CONFIG, f"{key}: expected {kind.__name__}, got {_shown(value)}")
    if isinstance(value, str) and "\0" in value:
        raise CniError(INVALID_CONFIG, f"{key}: contains a NUL byte")
    return value


def _shown(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_bridge_conf(conf: Mapping[str, Any]) -> BridgeConf:
    version = check_version(conf)
    name = _typed(conf, "name", str, "")
    if not name:
        raise CniError(INVALID_CONFIG, "network configuration has no name")
    if not NETWORK_NAME.fullmatch(name):  # the spec's rule: it names files and chains, no paths
        raise CniError(INVALID_CONFIG, f"name: {name[:64]!r} is not a valid network name "
                       "(letters, digits, '_', '.' and '-', starting with a letter or digit)")
    bridge = _typed(conf, "bridge", str, "cni0")
    validate_bridge_name(bridge)
    mtu = _typed(conf, "mtu", int, 0)
    if mtu and not 68 <= mtu <= 65535:  # 0: the kernel's default; below 68 IPv4 cannot work
        raise CniError(INVALID_CONFIG, f"mtu: out of range: {mtu} (68-65535)")
    ipam = _typed(conf, "ipam", dict, {})
    is_default_gateway = _typed(conf, "isDefaultGateway", bool, False)
    prev = conf.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "prevResult: expected an object")
    return BridgeConf(
        cni_version=version,
        name=name,
        bridge=bridge,
        # isDefaultGateway implies isGateway, as in the reference plugin.
        is_gateway=_typed(conf, "isGateway", bool, False) or is_default_gateway,
        is_default_gateway=is_default_gateway,
        force_address=_typed(conf, "forceAddress", bool, False),
        ip_masq=_typed(conf, "ipMasq", bool, False),
        mtu=mtu,
        hairpin_mode=_typed(conf, "hairpinMode", bool, False),
        promisc_mode=_typed(conf, "promiscMode", bool, False),
        ipam=ipam,
        host_local=parse_host_local(name, ipam) if ipam.get("type") == "host-local" else None,
        dns=_typed(conf, "dns", dict, {}),
        prev_result=prev,
        raw=conf,
    )


def validate_bridge_name(name: str) -> None:
    try:
        validate_ifname(name)
    except CniError as err:
        raise CniError(INVALID_CONFIG, f"bridge: {err.msg}") from None


def _network(value: Any, where: str) -> IPNetwork:
    if not isinstance(value, str):
        raise CniError(INVALID_CONFIG, f"{where}: invalid subnet {_shown(value)}")
    try:
        return ipaddress.ip_network(value)
    except ValueError as err:
        reason = str(err)
    try:  # say which network was meant when only the host bits are wrong
        reason = f"has host bits set; the network is {ipaddress.ip_interface(value).network}"
    except ValueError:
        pass
    raise CniError(INVALID_CONFIG, f"{where}: invalid subnet {value!r}: {reason}")


def _address(value: Any, where: str) -> IPAddress:
    try:
        return ipaddress.ip_address(value if isinstance(value, str) else "")
    except ValueError:
        raise CniError(INVALID_CONFIG, f"{where}: invalid IP address {_shown(value)}") from None


def parse_range(raw: Mapping[str, Any], where: str) -> Range:
    """A host-local range with the reference plugin's defaults (first usable .. last usable)."""
    if not isinstance(raw, dict) or "subnet" not in raw:
        raise CniError(INVALID_CONFIG, f"{where}: a range needs a subnet")
    subnet = _network(raw["subnet"], f"{where}.subnet")
    if subnet.num_addresses < 4 and subnet.version == 4:
        raise CniError(INVALID_CONFIG, f"{where}.subnet: {subnet} is too small to allocate from")
    first = subnet.network_address + 1
    last = subnet.broadcast_address - (1 if subnet.version == 4 else 0)
    start = _address(raw["rangeStart"], f"{where}.rangeStart") if raw.get("rangeStart") else first
    end = _address(raw["rangeEnd"], f"{where}.rangeEnd") if raw.get("rangeEnd") else last
    gateway = _address(raw["gateway"], f"{where}.gateway") if raw.get("gateway") else first
    for label, ip in (("rangeStart", start), ("rangeEnd", end), ("gateway", gateway)):
        if ip not in subnet:
            raise CniError(INVALID_CONFIG, f"{where}.{label}: {ip} is not in {subnet}")
    if start > end:
        raise CniError(INVALID_CONFIG, f"{where}: rangeStart {start} is after rangeEnd {end}")
    return Range(subnet, start, end, gateway)


def parse_host_local(network_name: str, ipam: Mapping[str, Any]) -> HostLocalConf:
    if "ranges" in ipam:
        raw_sets = ipam["ranges"]
        if not isinstance(raw_sets, list) or not raw_sets or not all(isinstance(s, list) and s for s in raw_sets):
            raise CniError(INVALID_CONFIG, "ipam.ranges: expected a non-empty list of non-empty lists")
    elif "subnet" in ipam:  # the legacy single-range form
        raw_sets = [[{k: ipam[k] for k in ("subnet", "rangeStart", "rangeEnd", "gateway") if k in ipam}]]
    else:
        raise CniError(INVALID_CONFIG, "ipam: host-local needs ranges or subnet")
    sets = []
    for i, raw_set in enumerate(raw_sets):
        ranges = []
        for j, raw in enumerate(raw_set):
            ranges.append(parse_range(raw, f"ipam.ranges[{i}][{j}]"))
        if len({r.subnet.version for r in ranges}) != 1:
            raise CniError(INVALID_CONFIG, f"ipam.ranges[{i}]: mixes IPv4 and IPv6")
        for a in range(len(ranges)):
            for b in range(a + 1, len(ranges)):
                if ranges[a].subnet.overlaps(ranges[b].subnet):
                    raise CniError(INVALID_CONFIG, f"ipam.ranges[{i}]: ranges {a} and {b} overlap")
        for other, earlier in enumerate(sets):
            if any(r.subnet.overlaps(e.subnet) for r in ranges for e in earlier):
                raise CniError(INVALID_CONFIG, f"ipam.ranges[{i}]: overlaps range set {other}")
        sets.append(tuple(ranges))
    routes = []
    raw_routes = ipam.get("routes") or []
    if not isinstance(raw_routes, list):
        raise CniError(INVALID_CONFIG, "ipam.routes: expected a list of routes")
    for k, raw in enumerate(raw_routes):
        if not isinstance(raw, dict) or "dst" not in raw:
            raise CniError(INVALID_CONFIG, f"ipam.routes[{k}]: a route needs dst")
        dst = _network(raw["dst"], f"ipam.routes[{k}].dst")
        gw = _address(raw["gw"], f"ipam.routes[{k}].gw") if raw.get("gw") else None
        routes.append(Route(dst, gw))
    data_dir = ipam.get("dataDir") or "/var/lib/cni/networks"
    if not isinstance(data_dir, str) or "\0" in data_dir or not data_dir.startswith("/"):
        raise CniError(INVALID_CONFIG, "ipam.dataDir: expected an absolute path")
    if len(data_dir) + len(network_name) > 3000:
        raise CniError(INVALID_CONFIG, "ipam.dataDir: path too long")
    return HostLocalConf(tuple(sets), tuple(routes), data_dir.rstrip("/") + "/" + network_name)

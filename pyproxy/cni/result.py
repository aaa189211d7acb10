"""CNI results in the version the runtime asked for.

0.3.x and 0.4.0 tag each IP with "version"; 1.x dropped that field. Everything else we emit is
the same shape in all of them.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Mapping, NamedTuple

from .config import IPAddress, Route
from .errors import INVALID_CONFIG, CniError


class Interface(NamedTuple):
    name: str
    mac: str
    sandbox: str = ""


class IPConfig(NamedTuple):
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    gateway: IPAddress | None
    interface: int | None


def render(version: str, interfaces: list[Interface], ips: list[IPConfig], routes: list[Route],
           dns: Mapping[str, Any]) -> dict[str, Any]:
    legacy = version.startswith("0.")
    out_ifaces = []
    for iface in interfaces:
        item = {"name": iface.name, "mac": iface.mac}
        if iface.sandbox:
            item["sandbox"] = iface.sandbox
        out_ifaces.append(item)
    out_ips = []
    for ip in ips:
        item: dict[str, Any] = {}
        if legacy:
            item["version"] = str(ip.address.version)
        if ip.interface is not None:
            item["interface"] = ip.interface
        item["address"] = str(ip.address)
        if ip.gateway:
            item["gateway"] = str(ip.gateway)
        out_ips.append(item)
    out_routes = [{"dst": str(r.dst), **({"gw": str(r.gw)} if r.gw else {})} for r in routes]
    return {"cniVersion": version, "interfaces": out_ifaces, "ips": out_ips, "routes": out_routes,
            "dns": dict(dns)}


def parse(result: Mapping[str, Any]) -> tuple[list[Interface], list[IPConfig], list[Route]]:
    """A result from any supported version (prevResult, or a delegated IPAM plugin's output)."""
    try:
        interfaces = [Interface(i["name"], i.get("mac", ""), i.get("sandbox", ""))
                      for i in result.get("interfaces") or []]
        ips = [IPConfig(ipaddress.ip_interface(i["address"]),
                        ipaddress.ip_address(i["gateway"]) if i.get("gateway") else None,
                        i.get("interface"))
               for i in result.get("ips") or []]
        routes = [Route(ipaddress.ip_network(r["dst"]), ipaddress.ip_address(r["gw"]) if r.get("gw") else None)
                  for r in result.get("routes") or []]
    except (KeyError, TypeError, ValueError) as err:
        raise CniError(INVALID_CONFIG, f"malformed result: {err}") from None
    return interfaces, ips, routes

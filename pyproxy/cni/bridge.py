"""The links of a bridge attachment: the bridge, the veth pair, addresses and routes.

Mirrors the reference `bridge` plugin: the host end of the veth is `veth<8 hex>` enslaved to the
bridge (hairpin as configured), the container end is CNI_IFNAME inside the pod's namespace with
the IPAM addresses and routes, and with isGateway the bridge carries each subnet's gateway.
"""

from __future__ import annotations

import errno
import ipaddress
import os

from .. import netns
from ..netlink.route import IFF_UP, Link, Netlink, NetlinkError
from .config import BridgeConf, IPAddress, Route
from .errors import INTERNAL, INVALID_CONFIG, TRY_AGAIN_LATER, UNKNOWN_CONTAINER, CniError
from .result import Interface, IPConfig

def open_netns(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise CniError(UNKNOWN_CONTAINER, f"failed to open netns {path!r}: {err.strerror}") from None


def netlink_in(path: str) -> Netlink:
    """A netlink socket bound inside the namespace at `path`."""
    try:
        with netns.entered(path):
            return Netlink()
    except OSError as err:  # setns refuses a file that is not a network namespace
        raise CniError(UNKNOWN_CONTAINER, f"{path!r} is not a network namespace: {err.strerror}") from None


def ensure_bridge(host: Netlink, conf: BridgeConf) -> Link:
    link = host.link(conf.bridge)
    if link is None:
        try:
            host.create_bridge(conf.bridge, conf.mtu)
            created = host.link(conf.bridge)
            if created is None:  # a concurrent DEL of the last pod removed it again
                raise CniError(TRY_AGAIN_LATER, f"bridge {conf.bridge} vanished while being created")
            # Pin the random MAC: a bridge without an explicit address takes its lowest port's
            # and changes it as pods come and go, which makes neighbours' ARP entries flap.
            host.set_link(created.index, mac=created.mac)
        except NetlinkError as err:
            if err.errno != errno.EEXIST:  # a concurrent ADD created it first
                raise
        link = host.link(conf.bridge)
        if link is None:
            raise CniError(TRY_AGAIN_LATER, f"bridge {conf.bridge} vanished while being set up")
    if link.kind != "bridge":
        raise CniError(INVALID_CONFIG, f"{conf.bridge!r} already exists but is not a bridge")
    host.set_link(link.index, up=True, promisc=True if conf.promisc_mode else None)
    return host.link(conf.bridge) or link


def create_veth(host: Netlink, conf: BridgeConf, netns_fd: int, ifname: str) -> str:
    for _ in range(10):
        name = "veth" + os.urandom(4).hex()
        try:
            host.create_veth(name, ifname, netns_fd, conf.mtu)
            return name
        except NetlinkError as err:
            if err.errno != errno.EEXIST or host.link(name) is None:
                raise
    raise CniError(INTERNAL, "could not find a free name for the host veth")


def ensure_gateway_addresses(host: Netlink, bridge: Link, conf: BridgeConf, ips: list[IPConfig]) -> None:
    present = host.addresses(bridge.index)
    for ip in ips:
        if ip.gateway is None:
            continue
        wanted = ipaddress.ip_interface((ip.gateway, ip.address.network.prefixlen))
        if wanted in present:
            continue
        clashing = [a for a in present if a.version == wanted.version and a.network.overlaps(wanted.network)]
        if clashing and not conf.force_address:
            raise CniError(INTERNAL, f"{conf.bridge!r} already has an IP address different from {wanted}: "
                           f"{clashing[0]} (set forceAddress to replace it)")
        for old in clashing:
            host.delete_address(bridge.index, old)
        try:
            host.add_address(bridge.index, wanted)
        except NetlinkError as err:
            if err.errno != errno.EEXIST:
                raise
        present.append(wanted)


def enable_forwarding(ips: list[IPConfig]) -> None:
    for version in {ip.address.version for ip in ips}:
        path = "/proc/sys/net/ipv4/ip_forward" if version == 4 else "/proc/sys/net/ipv6/conf/all/forwarding"
        with open(path) as f:
            if f.read().strip() == "1":
                continue
        with open(path, "w") as f:
            f.write("1")


def container_routes(conf_routes: list[Route], ips: list[IPConfig], default_gw: bool) -> list[Route]:
    routes = list(conf_routes)
    if default_gw:
        for ip in ips:
            if ip.gateway is None:
                continue
            default = ipaddress.ip_network("0.0.0.0/0" if ip.address.version == 4 else "::/0")
            if not any(r.dst == default for r in routes):
                routes.append(Route(default, ip.gateway))
    return routes


def configure_container(cont: Netlink, ifname: str, ips: list[IPConfig], routes: list[Route]) -> Link:
    link = cont.link(ifname)
    if link is None:
        raise CniError(INTERNAL, f"{ifname} did not appear in the container")
    for ip in ips:
        cont.add_address(link.index, ip.address)
    cont.set_link(link.index, up=True)
    for route in routes:
        gw = route.gw or _gateway_for(route.dst, ips)
        cont.add_route(route.dst, gw, link.index)
    return cont.link(ifname) or link


def _gateway_for(dst: ipaddress.IPv4Network | ipaddress.IPv6Network, ips: list[IPConfig]) -> IPAddress | None:
    # A route without gw uses the gateway of the address of its family, as the reference does.
    return next((ip.gateway for ip in ips if ip.address.version == dst.version and ip.gateway), None)


def setup(conf: BridgeConf, netns_path: str, ifname: str, ips: list[IPConfig],
          routes: list[Route]) -> tuple[list[Interface], list[IPConfig]]:
    """Create the attachment; on any failure undo the veth so that nothing is left behind."""
    netns_fd = open_netns(netns_path)
    host = Netlink()
    cont = netlink_in(netns_path)
    host_veth = ""
    try:
        if cont.link(ifname) is not None:
            raise CniError(INTERNAL, f"container veth name provided ({ifname}) already exists")
        bridge = ensure_bridge(host, conf)
        host_veth = create_veth(host, conf, netns_fd, ifname)
        veth = host.link(host_veth)
        if veth is None:
            raise CniError(TRY_AGAIN_LATER, f"veth {host_veth} vanished while being set up")
        host.set_link(veth.index, master=bridge.index, up=True)
        if conf.hairpin_mode:
            host.set_hairpin(veth.index, True)
        container_ips = [IPConfig(ip.address, ip.gateway, 2) for ip in ips]
        link = configure_container(cont, ifname, container_ips, routes)
        if conf.is_gateway:
            ensure_gateway_addresses(host, bridge, conf, container_ips)
            enable_forwarding(container_ips)
        bridge = host.link(conf.bridge) or bridge
        veth = host.link(host_veth) or veth
        interfaces = [Interface(bridge.name, bridge.mac), Interface(veth.name, veth.mac),
                      Interface(link.name, link.mac, netns_path)]
        return interfaces, container_ips
    except BaseException:
        if host_veth:
            veth = host.link(host_veth)
            if veth is not None:
                host.delete_link(veth.index)
        raise
    finally:
        host.close()
        cont.close()
        os.close(netns_fd)


def teardown(netns_path: str, ifname: str) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """Delete the container's interface (its veth peer goes with it); return its addresses.

    A namespace that is already gone is not an error: the kernel removed the pair with it.
    """
    if not netns_path or not os.path.exists(netns_path):
        return []
    try:
        cont = netlink_in(netns_path)
    except OSError:
        return []
    with cont:
        link = cont.link(ifname)
        if link is None:
            return []
        addresses = [a for a in cont.addresses(link.index) if not a.ip.is_link_local]
        cont.delete_link(link.index)
        return addresses


def check(conf: BridgeConf, netns_path: str, ifname: str, ips: list[IPConfig], routes: list[Route]) -> None:
    """CHECK: the container interface, its addresses and routes, and the bridge are as promised."""
    if not os.path.exists(netns_path):
        raise CniError(UNKNOWN_CONTAINER, f"netns {netns_path!r} does not exist")
    container = netlink_in(netns_path)  # first: a path that is no network namespace is the caller's error (3)
    with Netlink() as host:
        bridge = host.link(conf.bridge)
        if bridge is None or bridge.kind != "bridge":
            container.close()
            raise CniError(INTERNAL, f"bridge {conf.bridge!r} is missing")
        ports = [link for link in host.links() if link.master == bridge.index]
    with container as cont:
        link = cont.link(ifname)
        if link is None:
            raise CniError(INTERNAL, f"interface {ifname} is missing in {netns_path}")
        if not link.flags & IFF_UP:
            raise CniError(INTERNAL, f"interface {ifname} is down")
        have = set(cont.addresses(link.index))
        for ip in ips:
            if ip.address not in have:
                raise CniError(INTERNAL, f"{ifname} lacks address {ip.address}")
        live = {(r.dst, r.gateway) for r in cont.routes() if r.oif == link.index}
        for route in routes:
            gw = route.gw or _gateway_for(route.dst, ips)
            if (route.dst, gw) not in live:
                raise CniError(INTERNAL, f"route {route.dst} via {gw} is missing in {netns_path}")
    if not ports:
        raise CniError(INTERNAL, f"no veth is attached to {conf.bridge!r}")


"""A minimal rtnetlink client: links, addresses and routes, nothing else.

Why not pyroute2: importing it costs about 300 ms on the reference machine, five times the whole
budget of a CNI ADD. The plugin needs a dozen message shapes, written here with `struct` so that
the ADD path imports only the standard library.

Every call is one request on one socket; the socket lives in the network namespace that was
current when it was opened (see pyproxy.netns), which is how the plugin talks to the pod's
namespace and the host's at the same time.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from typing import NamedTuple

from .core import (NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_MULTI, NLM_F_REQUEST, NLMSG_DONE,
                   NLMSG_ERROR, attr, error_code, message, messages, nested, parse_attrs)

# Message types (linux/rtnetlink.h).
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26

# Link attributes (linux/if_link.h).
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_PROTINFO, IFLA_LINKINFO, IFLA_NET_NS_FD, IFLA_LINK_NETNSID = 12, 18, 28, 37
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_BRPORT_MODE = 4  # hairpin
IFF_UP, IFF_PROMISC = 0x1, 0x100

# Address and route attributes (linux/if_addr.h, linux/rtnetlink.h).
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_NODAD = 0x02
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
RT_TABLE_MAIN, RTPROT_BOOT, RTN_UNICAST = 254, 3, 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253

_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")


def _cstr(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode()


def _ip_bytes(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    return ip.packed


def _family(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


class Link(NamedTuple):
    index: int
    name: str
    kind: str
    mac: str
    mtu: int
    master: int
    flags: int
    peer_netnsid: int | None  # set on a veth whose peer lives in another namespace


class Route(NamedTuple):
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    oif: int


class NetlinkError(OSError):
    pass


class Netlink:
    """One rtnetlink socket, bound in the namespace current at construction."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        self._sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "Netlink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------------

    def request(self, kind: int, flags: int, payload: bytes) -> list[tuple[int, bytes]]:
        """Send one message; return the (type, body) replies. Errors raise NetlinkError."""
        self._seq += 1
        seq = self._seq
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        flags |= NLM_F_REQUEST | (0 if dump else NLM_F_ACK)
        self._sock.send(message(kind, flags, seq, payload))
        replies: list[tuple[int, bytes]] = []
        while True:
            for mtype, mflags, mseq, body in messages(self._sock.recv(1 << 20)):
                if mseq != seq:
                    continue
                if mtype == NLMSG_DONE:
                    return replies
                if mtype == NLMSG_ERROR:
                    code = error_code(body)
                    if code:
                        raise NetlinkError(code, os.strerror(code))
                    return replies
                replies.append((mtype, body))
                if not dump and not mflags & NLM_F_MULTI:
                    return replies

    # -- links --------------------------------------------------------------------------------

    @staticmethod
    def _link(body: bytes) -> Link:
        _, _, index, flags, _ = _IFINFO.unpack_from(body)
        attrs = parse_attrs(body[_IFINFO.size :])
        kind = ""
        if IFLA_LINKINFO in attrs:
            info = parse_attrs(attrs[IFLA_LINKINFO])
            kind = _cstr(info.get(IFLA_INFO_KIND, b""))
        mac = attrs.get(IFLA_ADDRESS, b"")
        netnsid = attrs.get(IFLA_LINK_NETNSID)
        return Link(
            index=index,
            name=_cstr(attrs.get(IFLA_IFNAME, b"")),
            kind=kind,
            mac=":".join(f"{b:02x}" for b in mac),
            mtu=struct.unpack("=I", attrs[IFLA_MTU])[0] if IFLA_MTU in attrs else 0,
            master=struct.unpack("=I", attrs[IFLA_MASTER])[0] if IFLA_MASTER in attrs else 0,
            flags=flags,
            peer_netnsid=struct.unpack("=i", netnsid)[0] if netnsid else None,
        )

    def links(self) -> list[Link]:
        replies = self.request(RTM_GETLINK, NLM_F_DUMP, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        return [self._link(body) for mtype, body in replies if mtype == RTM_NEWLINK]

    def link(self, name: str) -> Link | None:
        payload = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, name.encode() + b"\0")
        try:
            replies = self.request(RTM_GETLINK, 0, payload)
        except NetlinkError as err:
            if err.errno == 19:  # ENODEV
                return None
            raise
        return self._link(replies[0][1]) if replies else None

    def create_bridge(self, name: str, mtu: int = 0) -> None:
        self.create_link(name, "bridge", mtu)

    def create_link(self, name: str, kind: str, mtu: int = 0) -> None:
        """A link of a kind that needs no more than a name (bridge, dummy)."""
        attrs = attr(IFLA_IFNAME, name.encode() + b"\0")
        if mtu:
            attrs += attr(IFLA_MTU, struct.pack("=I", mtu))
        attrs += nested(IFLA_LINKINFO, attr(IFLA_INFO_KIND, kind.encode()))
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, _IFINFO.pack(0, 0, 0, 0, 0) + attrs)

    def create_veth(self, name: str, peer: str, peer_netns_fd: int, mtu: int = 0) -> None:
        """A veth pair: `name` here, `peer` created directly inside the namespace of the fd."""
        mtu_attr = attr(IFLA_MTU, struct.pack("=I", mtu)) if mtu else b""
        peer_info = (
            _IFINFO.pack(0, 0, 0, 0, 0)
            + attr(IFLA_IFNAME, peer.encode() + b"\0")
            + mtu_attr
            + attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
        )
        attrs = (
            attr(IFLA_IFNAME, name.encode() + b"\0")
            + mtu_attr
            + nested(
                IFLA_LINKINFO,
                attr(IFLA_INFO_KIND, b"veth"),
                nested(IFLA_INFO_DATA, nested(VETH_INFO_PEER, peer_info)),
            )
        )
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, _IFINFO.pack(0, 0, 0, 0, 0) + attrs)

    def set_link(self, index: int, *, up: bool | None = None, promisc: bool | None = None,
                 master: int | None = None, mtu: int | None = None, mac: str | None = None) -> None:
        flags = change = 0
        for wanted, bit in ((up, IFF_UP), (promisc, IFF_PROMISC)):
            if wanted is not None:
                change |= bit
                flags |= bit if wanted else 0
        attrs = b""
        if master is not None:
            attrs += attr(IFLA_MASTER, struct.pack("=I", master))
        if mtu:
            attrs += attr(IFLA_MTU, struct.pack("=I", mtu))
        if mac:
            attrs += attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "")))
        self.request(RTM_NEWLINK, 0, _IFINFO.pack(0, 0, index, flags, change) + attrs)

    def set_hairpin(self, index: int, on: bool) -> None:
        """Hairpin on a bridge port: frames may leave by the port they came in on."""
        payload = _IFINFO.pack(socket.AF_BRIDGE, 0, index, 0, 0) + nested(
            IFLA_PROTINFO, attr(IFLA_BRPORT_MODE, struct.pack("=B", 1 if on else 0))
        )
        self.request(RTM_SETLINK, 0, payload)

    def delete_link(self, index: int) -> None:
        self.request(RTM_DELLINK, 0, _IFINFO.pack(0, 0, index, 0, 0))

    # -- addresses ------------------------------------------------------------------------------

    def addresses(self, index: int = 0) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        out = []
        replies = self.request(RTM_GETADDR, NLM_F_DUMP, _IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        for mtype, body in replies:
            family, prefix, _, _, ifindex = _IFADDR.unpack_from(body)
            if mtype != RTM_NEWADDR or (index and ifindex != index):
                continue
            attrs = parse_attrs(body[_IFADDR.size :])
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw:
                out.append(ipaddress.ip_interface((ipaddress.ip_address(raw), prefix)))
        return out

    def add_address(self, index: int, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> None:
        ip = iface.ip
        family = _family(ip)
        attrs = attr(IFA_LOCAL, _ip_bytes(ip)) + attr(IFA_ADDRESS, _ip_bytes(ip))
        if ip.version == 4:
            attrs += attr(4, iface.network.broadcast_address.packed)  # IFA_BROADCAST, as `ip` sets
        # IPv6: skip duplicate address detection, or the address stays "tentative" (unusable)
        # for a second or two after the pod starts.
        flags = IFA_F_NODAD if ip.version == 6 else 0
        payload = _IFADDR.pack(family, iface.network.prefixlen, flags, RT_SCOPE_UNIVERSE, index) + attrs
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, payload)

    def delete_address(self, index: int, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> None:
        ip = iface.ip
        payload = _IFADDR.pack(_family(ip), iface.network.prefixlen, 0, 0, index) + attr(IFA_LOCAL, ip.packed)
        self.request(RTM_DELADDR, 0, payload)

    # -- routes ---------------------------------------------------------------------------------

    def routes(self, family: int = socket.AF_UNSPEC) -> list[Route]:
        out = []
        replies = self.request(RTM_GETROUTE, NLM_F_DUMP, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0))
        for mtype, body in replies:
            fam, dst_len, _, _, table, _, _, rtype, _ = _RTMSG.unpack_from(body)
            attrs = parse_attrs(body[_RTMSG.size :])
            if RTA_TABLE in attrs:
                table = struct.unpack("=I", attrs[RTA_TABLE])[0]
            if mtype != 24 or table != RT_TABLE_MAIN or rtype != RTN_UNICAST:
                continue
            zero = "0.0.0.0" if fam == socket.AF_INET else "::"
            dst_ip = ipaddress.ip_address(attrs[RTA_DST]) if RTA_DST in attrs else ipaddress.ip_address(zero)
            gw = ipaddress.ip_address(attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else None
            oif = struct.unpack("=I", attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0
            out.append(Route(ipaddress.ip_network((dst_ip, dst_len)), gw, oif))
        return out

    def add_route(self, dst: ipaddress.IPv4Network | ipaddress.IPv6Network,
                  gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None, oif: int) -> None:
        family = socket.AF_INET if dst.version == 4 else socket.AF_INET6
        scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
        attrs = attr(RTA_OIF, struct.pack("=I", oif))
        if dst.prefixlen:
            attrs += attr(RTA_DST, dst.network_address.packed)
        if gateway:
            attrs += attr(RTA_GATEWAY, gateway.packed)
        payload = _RTMSG.pack(family, dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST, 0)
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, payload + attrs)

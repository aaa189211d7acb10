"""Conntrack entries over netlink (ctnetlink): a filtered dump of one protocol's flows and batched
deletes, in the current network namespace. No process per flow, no text to parse.

The dump asks the kernel to filter by layer-3 family and protocol (CTA_FILTER, Linux 5.8+; on
older kernels the same request dumps the family and we filter here). Deletes are many
IPCTNL_MSG_CT_DELETE messages per sendmsg without acknowledgements: the kernel handles a
buffer synchronously and answers only errors, which are drained afterwards (ENOENT, a flow that
ended meanwhile, is not an error).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from typing import Iterable

from .core import (HEADER, NETLINK_NETFILTER, NFGEN, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_DONE,
                   NLMSG_ERROR, attr, iter_attrs, nested, netfilter_message, queued_errors)

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 0, 1, 2
CTA_TIMEOUT = 7
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_FILTER = 1, 2, 25
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_FILTER_ORIG_FLAGS, CTA_FILTER_REPLY_FLAGS = 1, 2
CTA_FILTER_FLAG_CTA_IP_SRC, CTA_FILTER_FLAG_CTA_PROTO_NUM = 1 << 0, 1 << 3
PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
# The kernel lays out an IPv4 flow's two tuples always the same way (ip {src, dst}, proto {num,
# sport, dport}): 52 bytes each. Read at fixed offsets when the layout is that one, which is
# several times faster than walking the attributes (100,000 flows: 1.7 s -> 0.2 s).
_V4_TUPLES = struct.Struct("!8x4x4s4x4s8xB3x4xH2x4xH2x" "8x4x4s4x4s8xB3x4xH2x4xH2x")
_V4_LAYOUT = (b"\x34\x00\x01\x80\x14\x00\x01\x80\x08\x00\x01\x00", 52, b"\x34\x00\x02\x80\x14\x00\x01\x80\x08\x00\x01\x00")


class ConntrackError(OSError):
    pass


Tuple = tuple[str, str, int, int]  # source, destination, source port, destination port


def _tuple(data: bytes) -> Tuple | None:
    src = dst = ""
    sport = dport = 0
    for kind, value in iter_attrs(data):
        if kind == CTA_TUPLE_IP:
            for k, v in iter_attrs(value):
                if k in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                    src = str(ipaddress.ip_address(v))
                elif k in (CTA_IP_V4_DST, CTA_IP_V6_DST):
                    dst = str(ipaddress.ip_address(v))
        elif kind == CTA_TUPLE_PROTO:
            for k, v in iter_attrs(value):
                if k == CTA_PROTO_SRC_PORT:
                    sport = struct.unpack("!H", v)[0]
                elif k == CTA_PROTO_DST_PORT:
                    dport = struct.unpack("!H", v)[0]
    return (src, dst, sport, dport) if src and dst else None


def _encode_tuple(kind: int, family: int, protocol: int, flow: Tuple) -> bytes:
    src, dst, sport, dport = flow
    v4 = family == socket.AF_INET
    return nested(kind,
                  nested(CTA_TUPLE_IP, attr(CTA_IP_V4_SRC if v4 else CTA_IP_V6_SRC, ipaddress.ip_address(src).packed),
                         attr(CTA_IP_V4_DST if v4 else CTA_IP_V6_DST, ipaddress.ip_address(dst).packed)),
                  nested(CTA_TUPLE_PROTO, attr(CTA_PROTO_NUM, bytes([protocol])),
                         attr(CTA_PROTO_SRC_PORT, struct.pack("!H", sport)),
                         attr(CTA_PROTO_DST_PORT, struct.pack("!H", dport))))


class Conntrack:
    """A ctnetlink socket in the namespace it was made in."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Conntrack":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _message(self, msg: int, flags: int, family: int, body: bytes) -> bytes:
        self.seq += 1
        return netfilter_message((NFNL_SUBSYS_CTNETLINK << 8) | msg, flags, self.seq, family, body)

    def flows(self, family: int = 4, protocol: str = "udp", wanted=None, reply_src: str = "") -> list[tuple[Tuple, Tuple]]:
        """(original tuple, reply tuple) of every flow of `protocol` in this namespace; with
        `wanted(orig_src, orig_dst, orig_sport, orig_dport, reply_src, reply_sport)` (addresses
        packed, ports as numbers), only the flows it accepts: the others cost no objects. With
        `reply_src`, only flows whose reply comes from that address (a DNAT target): the kernel
        walks its table but builds no message for the rest, the bulk of a dump's cost."""
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        number = PROTOCOLS[protocol]
        body = nested(CTA_TUPLE_ORIG, nested(CTA_TUPLE_PROTO, attr(CTA_PROTO_NUM, bytes([number]))))
        flags = attr(CTA_FILTER_ORIG_FLAGS, struct.pack("=I", CTA_FILTER_FLAG_CTA_PROTO_NUM))
        if reply_src:
            body += nested(CTA_TUPLE_REPLY, nested(CTA_TUPLE_IP, attr(
                CTA_IP_V4_SRC if family == 4 else CTA_IP_V6_SRC, ipaddress.ip_address(reply_src).packed)))
            flags += attr(CTA_FILTER_REPLY_FLAGS, struct.pack("=I", CTA_FILTER_FLAG_CTA_IP_SRC))
        try:
            return self._dump(af, body + nested(CTA_FILTER, flags), number, wanted, reply_src)
        except ConntrackError as err:
            if err.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            # a kernel without dump filters: filter here
            return self._dump(af, b"", number, wanted, reply_src)

    def _dump(self, af: int, body: bytes, protocol: int, wanted, reply_src: str = "") -> list[tuple[Tuple, Tuple]]:
        if reply_src and not body:  # the kernel did not filter: keep its promise here
            src = ipaddress.ip_address(reply_src).packed
            inner = wanted
            wanted = lambda o_s, o_d, o_sp, o_dp, r_s, r_sp: r_s == src and (  # noqa: E731
                inner is None or inner(o_s, o_d, o_sp, o_dp, r_s, r_sp))
        self.sock.send(self._message(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, af, body))
        out = []
        while True:
            data = self.sock.recv(1 << 20)
            pos = 0
            while pos + HEADER.size <= len(data):
                length, kind, _, _, _ = HEADER.unpack_from(data, pos)
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, pos + HEADER.size)[0]
                    if code:
                        raise ConntrackError(code, f"conntrack dump: {os.strerror(code)}")
                elif kind & 0xFF == 0 and af == socket.AF_INET and data.startswith(_V4_LAYOUT[0], pos + 20) \
                        and data.startswith(_V4_LAYOUT[2], pos + 20 + _V4_LAYOUT[1]):
                    osrc, odst, onum, osport, odport, rsrc, rdst, _, rsport, rdport = _V4_TUPLES.unpack_from(data, pos + 20)
                    if onum == protocol and (wanted is None or wanted(osrc, odst, osport, odport, rsrc, rsport)):
                        ntop = socket.inet_ntoa
                        out.append(((ntop(osrc), ntop(odst), osport, odport), (ntop(rsrc), ntop(rdst), rsport, rdport)))
                elif kind & 0xFF == 0:  # IPCTNL_MSG_CT_NEW: one flow, any layout
                    orig = reply = None
                    is_protocol = False
                    for a, value in iter_attrs(data, pos + HEADER.size + NFGEN.size, pos + length):
                        if a == CTA_TUPLE_ORIG:
                            orig = _tuple(value)
                            is_protocol = bytes([protocol]) in _proto_numbers(value)
                        elif a == CTA_TUPLE_REPLY:
                            reply = _tuple(value)
                    if orig and reply and is_protocol and (wanted is None or wanted(
                            _packed(orig[0]), _packed(orig[1]), orig[2], orig[3], _packed(reply[0]), reply[2])):
                        out.append((orig, reply))
                pos += (length + 3) & ~3

    def delete(self, flows: Iterable[Tuple], family: int = 4, protocol: str = "udp", batch: int = 500) -> int:
        """Delete flows by original tuple; returns how many the kernel found to delete."""
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        number = PROTOCOLS[protocol]
        messages = [self._message(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST, af, _encode_tuple(CTA_TUPLE_ORIG, af, number, f))
                    for f in flows]
        missing = 0
        for start in range(0, len(messages), batch):
            chunk = messages[start: start + batch]
            self.sock.send(b"".join(chunk))
            missing += self._drain_errors()
        return len(messages) - missing

    def create(self, flows: Iterable[tuple[Tuple, Tuple]], family: int = 4, protocol: str = "udp",
               timeout: int = 600, batch: int = 500) -> None:
        """Add flows (original, reply tuples), as `conntrack -I` does: for tests and benchmarks."""
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        number = PROTOCOLS[protocol]
        messages = [self._message(IPCTNL_MSG_CT_NEW, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, af,
                                  _encode_tuple(CTA_TUPLE_ORIG, af, number, orig)
                                  + _encode_tuple(CTA_TUPLE_REPLY, af, number, reply)
                                  + attr(CTA_TIMEOUT, struct.pack("!I", timeout)))
                    for orig, reply in flows]
        for start in range(0, len(messages), batch):
            self.sock.send(b"".join(messages[start: start + batch]))
            self._drain_errors()

    def _drain_errors(self) -> int:
        """Errors the kernel queued for the last buffer; ENOENT counted, anything else raised."""
        missing = 0
        for _, code in queued_errors(self.sock, 1 << 16, socket.MSG_DONTWAIT):
            if code != errno.ENOENT:
                raise ConntrackError(code, f"conntrack delete: {os.strerror(code)}")
            missing += 1
        return missing


def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def _proto_numbers(tuple_data: bytes) -> bytes:
    for kind, value in iter_attrs(tuple_data):
        if kind == CTA_TUPLE_PROTO:
            for k, v in iter_attrs(value):
                if k == CTA_PROTO_NUM:
                    return v
    return b""

"""IPVS over generic netlink, many requests per system call.

Why not pyroute2 for this: its IPVS API sends one request per call through an asyncio loop,
about 7 ms per real server in the qemu guest, so a 1,000-service reconcile took 84 s (see
bench/ipvs_sync.py). The kernel's IPVS netlink API is small: here each change is one message,
a few thousand of them go in one sendmsg, and only errors come back. The
tests read the kernel's table back with pyroute2, an independent decoder.

Layouts follow include/uapi/linux/ip_vs.h.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Iterator, NamedTuple

from .core import (NETLINK_CAP_ACK, NETLINK_GENERIC, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
                   SOL_NETLINK, attr, error_code, message, messages, nested, parse_attrs, queued_errors)

GENL_ID_CTRL, CTRL_CMD_GETFAMILY = 0x10, 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 1, 2
IPVS_VERSION = 1
NEW_SERVICE, SET_SERVICE, DEL_SERVICE, GET_SERVICE = 1, 2, 3, 4
NEW_DEST, SET_DEST, DEL_DEST, GET_DEST = 5, 6, 7, 8
CMD_ATTR_SERVICE, CMD_ATTR_DEST = 1, 2
SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK, SVC_SCHED, SVC_FLAGS, SVC_TIMEOUT, SVC_NETMASK = range(1, 10)
DEST_ADDR, DEST_PORT, DEST_FWD, DEST_WEIGHT, DEST_UTHRESH, DEST_LTHRESH, DEST_ACTIVE, DEST_INACTIVE = range(1, 9)
DEST_ADDR_FAMILY = 11
FWD_MASQ = 0  # IP_VS_CONN_F_MASQ: NAT
FLAG_PERSISTENT = 0x1
PROTOCOLS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP, "SCTP": 132}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}
_GENL = struct.Struct("=BBH")


class IpvsNetlinkError(OSError):
    pass


class Service(NamedTuple):
    protocol: str
    ip: str
    port: int
    scheduler: str = "rr"
    timeout: int = 0  # persistence seconds

    def key_attrs(self) -> bytes:
        af = socket.AF_INET6 if ":" in self.ip else socket.AF_INET
        return (attr(SVC_AF, struct.pack("=H", af)) + attr(SVC_PROTOCOL, struct.pack("=H", PROTOCOLS[self.protocol]))
                + attr(SVC_ADDR, _packed(self.ip)) + attr(SVC_PORT, struct.pack("!H", self.port)))

    def full_attrs(self) -> bytes:
        flags = FLAG_PERSISTENT if self.timeout else 0
        return (self.key_attrs() + attr(SVC_SCHED, self.scheduler.encode() + b"\0")
                + attr(SVC_FLAGS, struct.pack("=II", flags, 0xFFFFFFFF))
                + attr(SVC_TIMEOUT, struct.pack("=I", self.timeout))
                + attr(SVC_NETMASK, struct.pack("=I", 128 if ":" in self.ip else 0xFFFFFFFF)))  # host order, despite the be32


# what every real server carries besides its address, port and weight: NAT, no thresholds
_DEST_FIXED = {af: attr(DEST_FWD, struct.pack("=I", FWD_MASQ)) + attr(DEST_UTHRESH, struct.pack("=I", 0))
               + attr(DEST_LTHRESH, struct.pack("=I", 0)) + attr(DEST_ADDR_FAMILY, struct.pack("=H", af))
               for af in (socket.AF_INET, socket.AF_INET6)}


class Dest(NamedTuple):
    ip: str
    port: int
    weight: int = 1
    connections: int = 0  # active + inactive, as read from the kernel

    def attrs(self) -> bytes:
        af = socket.AF_INET6 if ":" in self.ip else socket.AF_INET
        return (attr(DEST_ADDR, _packed(self.ip)) + attr(DEST_PORT, struct.pack("!H", self.port))
                + attr(DEST_WEIGHT, struct.pack("=i", self.weight)) + _DEST_FIXED[af])


def _packed(ip: str) -> bytes:
    """union nf_inet_addr: 16 bytes, an IPv4 address in the first four."""
    return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip).ljust(16, b"\0")


def _service(a: dict[int, bytes]) -> Service | None:
    if SVC_ADDR not in a:
        return None  # fwmark services are not ours
    af = struct.unpack("=H", a[SVC_AF])[0]
    proto = PROTOCOL_NAMES.get(struct.unpack("=H", a[SVC_PROTOCOL])[0])
    if proto is None:
        return None
    flags = struct.unpack_from("=I", a[SVC_FLAGS])[0]
    timeout = struct.unpack("=I", a[SVC_TIMEOUT])[0] if flags & FLAG_PERSISTENT else 0
    return Service(proto, _address(a[SVC_ADDR], af), struct.unpack("!H", a[SVC_PORT])[0],
                   a[SVC_SCHED].split(b"\0", 1)[0].decode(), timeout)


def _address(raw: bytes, af: int) -> str:
    return socket.inet_ntop(af, raw[:4] if af == socket.AF_INET else raw[:16])


class IpvsSocket:
    """One generic netlink socket bound in the current network namespace."""

    BATCH_BYTES = 1 << 17

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        # room for a big dump's replies and for the errors of a whole batch
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 1 << 22)  # SO_RCVBUFFORCE (root)
        self.sock.setsockopt(socket.SOL_SOCKET, 32, self.BATCH_BYTES * 4)  # SO_SNDBUFFORCE: one batch fits
        self.sock.settimeout(30)
        self.sock.bind((0, 0))
        self.seq = 0
        self.family = self._resolve()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "IpvsSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _message(self, kind: int, cmd: int, flags: int, payload: bytes, version: int = IPVS_VERSION) -> bytes:
        self.seq += 1
        return message(kind, flags, self.seq, _GENL.pack(cmd, version, 0) + payload)

    def _replies(self) -> Iterator[tuple[int, int, int, bytes]]:
        """(type, flags, seq, payload) for each message in the next datagram."""
        return messages(self.sock.recv(1 << 20))

    def _resolve(self) -> int:
        self.sock.send(self._message(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, NLM_F_REQUEST,
                                     attr(CTRL_ATTR_FAMILY_NAME, b"IPVS\0"), version=1))
        for kind, _, _, payload in self._replies():
            if kind == NLMSG_ERROR:
                code = error_code(payload)
                raise IpvsNetlinkError(code, f"the kernel has no IPVS ({os.strerror(code)}): is ip_vs loaded?")
            return struct.unpack_from("=H", parse_attrs(payload[_GENL.size:])[CTRL_ATTR_FAMILY_ID])[0]
        raise IpvsNetlinkError(errno.EIO, "no answer resolving the IPVS netlink family")

    def _dump(self, cmd: int, payload: bytes) -> list[dict[int, bytes]]:
        self.sock.send(self._message(self.family, cmd, NLM_F_REQUEST | NLM_F_DUMP, payload))
        out = []
        while True:
            for kind, _, _, body in self._replies():
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    code = error_code(body)
                    if code:
                        raise IpvsNetlinkError(code, os.strerror(code))
                    continue
                top = parse_attrs(body[_GENL.size:])
                out.append(parse_attrs(top.get(CMD_ATTR_SERVICE) or top.get(CMD_ATTR_DEST) or b""))

    def services(self) -> list[Service]:
        return [svc for svc in map(_service, self._dump(GET_SERVICE, b"")) if svc is not None]

    def service(self, key: Service) -> Service | None:
        """The live virtual server with key's protocol, address and port, or None."""
        self.sock.send(self._message(self.family, GET_SERVICE, NLM_F_REQUEST,
                                     nested(CMD_ATTR_SERVICE, key.key_attrs())))
        while True:
            for kind, _, _, body in self._replies():
                if kind == NLMSG_ERROR:
                    code = error_code(body)
                    if code in (errno.ESRCH, errno.ENOENT):
                        return None
                    raise IpvsNetlinkError(code, os.strerror(code))
                if kind == self.family:
                    return _service(parse_attrs(parse_attrs(body[_GENL.size:]).get(CMD_ATTR_SERVICE, b"")))

    def dests(self, service: Service) -> list[Dest]:
        out = []
        af = socket.AF_INET6 if ":" in service.ip else socket.AF_INET
        for a in self._dump(GET_DEST, nested(CMD_ATTR_SERVICE, service.key_attrs())):
            family = struct.unpack("=H", a[DEST_ADDR_FAMILY])[0] if DEST_ADDR_FAMILY in a else af
            conns = struct.unpack("=I", a[DEST_ACTIVE])[0] + struct.unpack("=I", a[DEST_INACTIVE])[0]
            out.append(Dest(_address(a[DEST_ADDR], family), struct.unpack("!H", a[DEST_PORT])[0],
                            struct.unpack("=i", a[DEST_WEIGHT])[0], conns))
        return out

    def apply(self, changes: list[tuple[int, Service, Dest | None]]) -> None:
        """Send (command, service, dest) changes in order, many per sendmsg; raise on the first
        error, naming it (the others are done: IPVS has no transactions). No acknowledgement is
        asked for: the kernel handles the messages inside sendmsg, so when it returns, every
        error is already queued on the socket, and silence means success."""
        sent: dict[int, tuple[int, Service, Dest | None]] = {}
        keys: dict[Service, bytes] = {}  # a service's attributes, encoded once for all its real servers
        batch: list[bytes] = []
        size = 0
        for change in changes:
            cmd, service, dest = change
            if cmd in (NEW_SERVICE, SET_SERVICE):
                payload = nested(CMD_ATTR_SERVICE, service.full_attrs())
            else:
                payload = keys.get(service) or keys.setdefault(service, nested(CMD_ATTR_SERVICE, service.key_attrs()))
            if dest is not None:
                payload += nested(CMD_ATTR_DEST, dest.attrs())
            msg = self._message(self.family, cmd, NLM_F_REQUEST, payload)
            sent[self.seq] = change
            batch.append(msg)
            size += len(msg)
            if size >= self.BATCH_BYTES:
                self._send(batch, sent)
                batch, size = [], 0
        if batch:
            self._send(batch, sent)

    def _send(self, batch: list[bytes], sent: dict[int, tuple[int, Service, Dest | None]]) -> None:
        self.sock.sendall(b"".join(batch))
        error = None
        self.sock.setblocking(False)
        try:
            for seq, code in queued_errors(self.sock, 1 << 20):
                if error is None and seq in sent:
                    error = (code, sent[seq])
        finally:
            self.sock.settimeout(30)
        sent.clear()
        if error:
            code, (cmd, service, dest) = error
            what = {NEW_SERVICE: "adding", SET_SERVICE: "updating", DEL_SERVICE: "deleting",
                    NEW_DEST: "adding", SET_DEST: "updating", DEL_DEST: "deleting"}[cmd]
            target = f"real server {dest.ip}:{dest.port} of " if dest else ""
            raise IpvsNetlinkError(code, f"{what} {target}virtual server {service.protocol} {service.ip}:{service.port}:"
                                         f" {os.strerror(code)}")

"""The netlink wire format the family modules share (linux/netlink.h, linux/netfilter/nfnetlink.h).

Only `struct`: the CNI plugin imports this on every pod start.
"""

from __future__ import annotations

import socket
import struct
from typing import Iterator

# Protocols, message types, flags.
NETLINK_NETFILTER, NETLINK_GENERIC = 12, 16
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x2, 0x4, 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # socket option: errors echo only the header of a failed message

HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
ATTR = struct.Struct("=HH")  # nlattr: length, type
NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big-endian)
_ERRNO = struct.Struct("=i")  # nlmsgerr's first field: 0 or a negative errno


def align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, value: bytes) -> bytes:
    body = ATTR.pack(ATTR.size + len(value), kind) + value
    return body + b"\0" * (align(len(body)) - len(body))


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def parse_attrs(data: bytes) -> dict[int, bytes]:
    """Attributes by type (the last of a repeated one wins)."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos + ATTR.size <= len(data):
        length, kind = ATTR.unpack_from(data, pos)
        if length < ATTR.size:
            break
        out[kind & ~NLA_F_NESTED] = data[pos + ATTR.size : pos + length]
        pos += align(length)
    return out


def iter_attrs(data: bytes, pos: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(type, value) of the attributes in data[pos:end], in order, read in place: no slice of
    the whole run is made first (ctnetlink walks a flow inside a large dump buffer)."""
    if end is None:
        end = len(data)
    while pos + ATTR.size <= end:
        length, kind = ATTR.unpack_from(data, pos)
        if length < ATTR.size:
            return
        yield kind & NLA_TYPE_MASK, data[pos + ATTR.size : pos + length]
        pos += align(length)


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return HEADER.pack(HEADER.size + len(body), kind, flags, seq, 0) + body


def netfilter_message(kind: int, flags: int, seq: int, family: int, body: bytes, res_id: int = 0) -> bytes:
    """A message of a nfnetlink subsystem: `kind` is subsystem << 8 | message type."""
    return message(kind, flags, seq, NFGEN.pack(family, 0, socket.htons(res_id)) + body)


def messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, body) of each message in one received datagram."""
    pos = 0
    while pos + HEADER.size <= len(data):
        length, kind, flags, seq, _ = HEADER.unpack_from(data, pos)
        yield kind, flags, seq, data[pos + HEADER.size : pos + length]
        pos += align(length) if length else len(data)  # a zero length would loop forever


def error_code(body: bytes) -> int:
    """The errno of an NLMSG_ERROR body, positive; 0 is an acknowledgement."""
    return -_ERRNO.unpack_from(body)[0]


def queued_errors(sock: socket.socket, bufsize: int = 1 << 16, flags: int = 0) -> Iterator[tuple[int, int]]:
    """(seq, errno) of each failed message queued on a non-blocking socket (or with flags
    MSG_DONTWAIT), until none is left. For batches sent without acknowledgements: the kernel
    handles a buffer inside sendmsg, so when it returns every error is already queued."""
    while True:
        try:
            data = sock.recv(bufsize, flags)
        except BlockingIOError:
            return
        for kind, _, seq, body in messages(data):
            if kind == NLMSG_ERROR:
                code = error_code(body)
                if code:
                    yield seq, code

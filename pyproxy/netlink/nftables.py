"""Set and map element changes straight over nfnetlink, in one atomic batch.

Why not `nft -f`: before a `delete element`, nft 1.0.6 fetches the table's state from the kernel,
which costs ~30 ms with 10,000 services, for a change the kernel applies in well under 1 ms. An
endpoint that moved is only element changes (see render.py), so the partial sync that follows
it sends them here. Anything else (chains, rules, sets) still goes through nft.

Encodings follow nft's: a concatenation pads each field to 4 bytes; ports are big-endian, the
`numgen` keys host-endian; verdicts are nested (code, chain).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

from .core import (NETLINK_CAP_ACK, NETLINK_NETFILTER, NLM_F_CREATE, NLM_F_REQUEST, SOL_NETLINK, attr, nested,
                   netfilter_message, queued_errors)

SO_SNDBUFFORCE = 32
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA = 1, 2
NFTA_DATA_VALUE, NFTA_DATA_VERDICT = 1, 2
NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN = 1, 2
VERDICTS = {"drop": 0, "accept": 1, "jump": -3, "goto": -4}
PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}


class ElementError(OSError):
    pass


def _concat(text: str) -> bytes:
    """`10.96.0.1 . tcp . 80` as nft stores it: each field padded to a 4-byte register."""
    out = []
    for part in text.split(" . "):
        if part in PROTOCOLS:
            out.append(bytes([PROTOCOLS[part]]) + b"\0\0\0")
        elif part.isdigit():
            out.append(struct.pack("!H", int(part)) + b"\0\0")  # every number in a concatenation is a port
        else:
            out.append(ipaddress.ip_address(part).packed)
    return b"".join(out)


def encode_key(container: str, text: str) -> bytes:
    if container.startswith("endpoints-"):
        return struct.pack("=I", int(text))  # numgen's result: a host-endian u32
    return _concat(text)


def encode_data(value: str) -> bytes:
    """A map element's value: `addr . port`, or a verdict (`drop`, `goto chain`)."""
    word, _, chain = value.partition(" ")
    if word in VERDICTS:
        verdict = attr(NFTA_VERDICT_CODE, struct.pack("!i", VERDICTS[word]))
        if chain:
            verdict += attr(NFTA_VERDICT_CHAIN, chain.encode() + b"\0")
        return nested(NFTA_DATA_VERDICT, verdict)
    return attr(NFTA_DATA_VALUE, _concat(value))


def open_socket() -> socket.socket:
    """A netfilter netlink socket in the current network namespace, for ElementBatch.send."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_NETFILTER)
    sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 1 << 20)
    sock.bind((0, 0))
    return sock


class ElementBatch:
    """Element additions and deletions for one table, sent as one nfnetlink transaction."""

    PER_MESSAGE = 500  # elements per message: keeps each message well under the socket buffer

    def __init__(self, family: int, table: str) -> None:
        self.nfproto = socket.AF_INET if family == 4 else socket.AF_INET6
        self.table = table
        self.ops: list[tuple[int, str, list[bytes]]] = []

    def add(self, container: str, items: dict[str, str]) -> None:
        self._op(NFT_MSG_NEWSETELEM, container, [
            nested(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, encode_key(container, k)))
            + (nested(NFTA_SET_ELEM_DATA, encode_data(v)) if v else b"")
            for k, v in items.items()])

    def delete(self, container: str, keys) -> None:
        self._op(NFT_MSG_DELSETELEM, container, [
            nested(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, encode_key(container, k))) for k in keys])

    def _op(self, kind: int, container: str, elements: list[bytes]) -> None:
        for i in range(0, len(elements), self.PER_MESSAGE):
            self.ops.append((kind, container, elements[i:i + self.PER_MESSAGE]))

    def encode(self) -> bytes:
        seq = 1
        parts = [netfilter_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, socket.AF_UNSPEC, b"",
                                   NFNL_SUBSYS_NFTABLES)]
        for kind, container, elements in self.ops:
            seq += 1
            payload = (attr(NFTA_SET_ELEM_LIST_TABLE, self.table.encode() + b"\0")
                       + attr(NFTA_SET_ELEM_LIST_SET, container.encode() + b"\0")
                       + nested(NFTA_SET_ELEM_LIST_ELEMENTS,
                                *(nested(NFTA_LIST_ELEM, e) for e in elements)))
            flags = NLM_F_REQUEST | (NLM_F_CREATE if kind == NFT_MSG_NEWSETELEM else 0)
            parts.append(netfilter_message(NFNL_SUBSYS_NFTABLES << 8 | kind, flags, seq, self.nfproto, payload))
        parts.append(netfilter_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 1, socket.AF_UNSPEC, b"",
                                       NFNL_SUBSYS_NFTABLES))
        return b"".join(parts)

    def send(self, sock: socket.socket | None = None) -> int:
        """One transaction: all of it or, on any error, none of it (the kernel aborts the batch).
        The kernel handles the batch inside sendmsg, so every error is queued when it returns.
        `sock` (from open_socket) may be reused across batches: closing a netfilter netlink
        socket costs ~9 ms, more than the batch itself. Returns the bytes sent."""
        data = self.encode()
        own = sock is None
        sock = sock or open_socket()
        try:
            if len(data) * 2 > sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF):
                # the whole batch is one datagram: past net.core.wmem_max only SO_SNDBUFFORCE (root) fits it
                sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, len(data) * 2)
            sock.sendto(data, (0, 0))
            errors = list(queued_errors(sock))
        finally:
            if own:
                sock.close()
        if errors:
            seq, code = errors[0]
            kind, container, _ = self.ops[seq - 2] if 2 <= seq < len(self.ops) + 2 else (0, "?", [])
            verb = "adding to" if kind == NFT_MSG_NEWSETELEM else "deleting from"
            raise ElementError(code, f"{verb} {self.table} {container}: {os.strerror(code)} "
                                     f"({errno.errorcode.get(code, code)})")
        return len(data)


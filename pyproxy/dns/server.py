"""DNS over UDP and TCP for the cluster zone.

`Responder.respond(query bytes) -> response bytes | None` holds all the protocol logic without
sockets (so hostile input is tested directly); `DnsServer` serves it over UDP (a plain socket
loop) and TCP (asyncio).
Queries are parsed by hand, strictly: anything malformed gets at most a header-sized FORMERR, or
nothing when it is not even a query, so no packet earns an answer larger than it justifies.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading

import dns.name
import dns.rcode


from .zone import Zone, render_entry, render_truncated

log = logging.getLogger("pyproxy.dns")

QR, AA, TC, RD = 0x8000, 0x0400, 0x0200, 0x0100
OPT, AXFR, IXFR = 41, 252, 251
EDNS_PAYLOAD = 1232
_HEADER = struct.Struct("!HHHHHH")


class Responder:
    def __init__(self, zone: Zone | None = None) -> None:
        self.zone = zone  # None until the first sync: SERVFAIL

    def _error(self, qid: int, flags: int, rcode: int, question: bytes = b"", edns: bool = False,
               ext_rcode: int = 0) -> bytes:
        out_flags = QR | (flags & RD) | (rcode & 0xF)
        body = question
        if edns:
            body += b"\x00" + struct.pack("!HHBBHH", OPT, EDNS_PAYLOAD, ext_rcode, 0, 0, 0)
        return _HEADER.pack(qid, out_flags, 1 if question else 0, 0, 0, 1 if edns else 0) + body

    def respond(self, data: bytes, udp: bool = True) -> bytes | None:
        if len(data) < 12:
            return None
        qid, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
        if flags & QR:
            return None  # a response, not a query: never answer those
        if (flags >> 11) & 0xF != 0:
            return self._error(qid, flags, dns.rcode.NOTIMP)
        if qd != 1:
            return self._error(qid, flags, dns.rcode.FORMERR)
        # The question: plain labels only (no compression pointers), at most 255 bytes.
        pos, end = 12, len(data)
        while True:
            if pos >= end:
                return self._error(qid, flags, dns.rcode.FORMERR)
            length = data[pos]
            if length == 0:
                pos += 1
                break
            if length > 63:
                return self._error(qid, flags, dns.rcode.FORMERR)
            pos += length + 1
        if pos + 4 > end or pos - 12 > 255:
            return self._error(qid, flags, dns.rcode.FORMERR)
        qtype, qclass = struct.unpack_from("!HH", data, pos)
        question = data[12: pos + 4]
        qname_end = pos
        pos += 4
        # EDNS: one OPT record, alone in the additional section.
        edns, payload = False, 512
        if ar:
            if an or ns or ar != 1 or pos + 11 > end or data[pos] != 0:
                return self._error(qid, flags, dns.rcode.FORMERR, question)
            rtype, rclass, _ext, version, _z, rdlen = struct.unpack_from("!HHBBHH", data, pos + 1)
            if rtype != OPT or pos + 11 + rdlen != end:
                return self._error(qid, flags, dns.rcode.FORMERR, question)
            edns, payload = True, max(512, rclass)
            if version > 0:  # BADVERS is extended rcode 16: 1 in the OPT's upper bits, 0 in the header
                return self._error(qid, flags, 0, question, edns=True, ext_rcode=1)
        elif an or ns or pos != end:
            return self._error(qid, flags, dns.rcode.FORMERR, question)
        if qclass not in (1, 255) or qtype in (AXFR, IXFR):
            return self._error(qid, flags, dns.rcode.REFUSED, question, edns)
        zone = self.zone
        if zone is None:
            return self._error(qid, flags, dns.rcode.SERVFAIL, question, edns)
        # The finished answer, (rcode, wire, the zone version it was rendered at), by the question's
        # wire bytes lowercased (DNS case is ASCII only); shared by the zone's versions. Each cache
        # is asked on its own: a name just removed has a stale positive answer and a fresh negative one.
        key = (data[12:qname_end].lower(), qtype, edns)
        cache = zone.wire_cache
        cached = zone.fresh(cache.get(key), key[0]) or zone.fresh(zone.negative_wire.get(key), key[0])
        if cached is None:
            rendered = render_wire(zone, data[12:qname_end], qtype, edns)
            if rendered is None:
                return self._error(qid, flags, dns.rcode.REFUSED, question, edns)
            cache = zone.wire_cache_for(key[0])
            cached = cache[key] = (*rendered, zone.version)
        rcode, wire, _ = cached
        out_flags = QR | AA | (flags & RD) | rcode
        limit = payload if edns else 512
        if udp and len(wire) > limit:
            # Too big for the client's buffer: the records that fit, TC set (it may retry over TCP).
            truncated = zone.fresh(cache.get((key, limit)), key[0])
            if truncated is None:
                rendered = render_wire(zone, data[12:qname_end], qtype, edns, limit)
                truncated = cache[(key, limit)] = (*rendered, zone.version)
            wire = truncated[1]
            out_flags |= TC
        # ID, flags and the client's own spelling of the name (same length, so pointers hold).
        return struct.pack("!HH", qid, out_flags) + wire[4:12] + question + wire[12 + len(question):]


def render_wire(zone: Zone, qname_wire: bytes, qtype: int, edns: bool,
                limit: int = 0) -> tuple[int, bytes] | None:
    """(rcode, response wire) for a question given as wire-format name bytes, None if not ours;
    with a `limit`, cut to fit it (render_truncated)."""
    labels, pos = [], 0
    while qname_wire[pos]:
        labels.append(qname_wire[pos + 1: pos + 1 + qname_wire[pos]].lower())
        pos += 1 + qname_wire[pos]
    try:
        name = dns.name.Name(labels + [b""])
    except dns.name.NameTooLong:
        return None
    entry = zone.lookup(qname_wire.lower(), qtype)  # length bytes (< 64) are never letters
    if entry is None:
        return None
    if limit:
        return entry.rcode, render_truncated(entry, name, qtype, edns, limit, EDNS_PAYLOAD)
    return entry.rcode, render_entry(entry, name, qtype, edns, EDNS_PAYLOAD)


def _udp_loop(sock: socket.socket, responder: Responder, stopped: threading.Event) -> None:
    """A blocking recvfrom/sendto loop: several times the rate of asyncio's datagram path. No
    socket timeout (it would add a poll per packet); `DnsServer.stop` wakes it by a shutdown."""
    recv, send, respond = sock.recvfrom, sock.sendto, responder.respond
    while True:
        try:
            data, addr = recv(4096)  # queries are small; EDNS buffers above 4096 are not honoured
        except OSError:
            return
        if stopped.is_set():
            return
        try:
            out = respond(data)
            if out is not None:
                send(out, addr)
        except Exception:  # noqa: BLE001 - one bad packet must never stop the server
            log.exception("query failed")


async def _tcp(responder: Responder, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))[0]
            data = await asyncio.wait_for(reader.readexactly(size), 10)
            out = responder.respond(data, udp=False)
            if out is None:
                break
            writer.write(struct.pack("!H", len(out)) + out)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, struct.error):
        pass
    except Exception:  # noqa: BLE001
        log.exception("tcp query failed")
    finally:
        writer.close()


class DnsServer:
    """The responder served on one address over UDP and TCP, from a background thread."""

    def __init__(self, responder: Responder, host: str = "0.0.0.0", port: int = 53) -> None:
        self.responder = responder
        self.host = host
        self.port = port
        self.loop = asyncio.new_event_loop()

    def _sockets(self) -> tuple[socket.socket, socket.socket]:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # ride out bursts without drops
        udp.bind((self.host, self.port))
        port = udp.getsockname()[1]  # port 0: TCP takes the same number UDP got
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((self.host, port))
        tcp.listen(128)
        self.port = port
        return udp, tcp

    def start(self) -> "DnsServer":
        """Bind now (in the caller's network namespace), then serve UDP and TCP from threads."""
        udp, tcp = self._sockets()
        ready = threading.Event()
        self._stopped = threading.Event()
        self._udp = udp

        def run_tcp() -> None:
            asyncio.set_event_loop(self.loop)
            handler = lambda r, w: _tcp(self.responder, r, w)  # noqa: E731
            self.loop.run_until_complete(asyncio.start_server(handler, sock=tcp))
            ready.set()
            self.loop.run_forever()

        self._threads = [threading.Thread(target=run_tcp, name="dns-tcp", daemon=True),
                         threading.Thread(target=_udp_loop, args=(udp, self.responder, self._stopped), name="dns-udp",
                                          daemon=True)]
        for t in self._threads:
            t.start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        self._stopped.set()
        self.loop.call_soon_threadsafe(self.loop.stop)
        try:
            self._udp.shutdown(socket.SHUT_RDWR)  # wakes the blocked recvfrom (then says ENOTCONN)
        except OSError:
            pass
        for t in self._threads:
            t.join(5)
        self._udp.close()

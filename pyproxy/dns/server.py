"""DNS over UDP and TCP for the cluster zone.

`Responder.respond(query bytes) -> response bytes | None` holds all the protocol logic without
sockets (so hostile input is tested directly); `serve` wraps it in asyncio UDP and TCP servers.
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


from .zone import Zone, render_entry

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
        pos, labels = 12, []
        while True:
            if pos >= len(data):
                return self._error(qid, flags, dns.rcode.FORMERR)
            length = data[pos]
            if length == 0:
                pos += 1
                break
            if length > 63 or pos + 1 + length > len(data) or pos - 12 > 255:
                return self._error(qid, flags, dns.rcode.FORMERR)
            labels.append(data[pos + 1: pos + 1 + length])
            pos += 1 + length
        if pos + 4 > len(data) or pos - 12 > 255:
            return self._error(qid, flags, dns.rcode.FORMERR)
        qtype, qclass = struct.unpack_from("!HH", data, pos)
        question = data[12: pos + 4]
        pos += 4
        # EDNS: one OPT record, alone in the additional section.
        edns, payload, version = False, 512, 0
        if ar:
            if an or ns or ar != 1 or pos + 11 > len(data) or data[pos] != 0:
                return self._error(qid, flags, dns.rcode.FORMERR, question)
            rtype, rclass, _ext, version, _z, rdlen = struct.unpack_from("!HHBBHH", data, pos + 1)
            if rtype != OPT or pos + 11 + rdlen != len(data):
                return self._error(qid, flags, dns.rcode.FORMERR, question)
            edns, payload = True, max(512, rclass)
            if version > 0:  # BADVERS is extended rcode 16: 1 in the OPT's upper bits, 0 in the header
                return self._error(qid, flags, 0, question, edns=True, ext_rcode=1)
        elif an or ns or pos != len(data):
            return self._error(qid, flags, dns.rcode.FORMERR, question)
        if qclass not in (1, 255) or qtype in (AXFR, IXFR):
            return self._error(qid, flags, dns.rcode.REFUSED, question, edns)
        zone = self.zone
        if zone is None:
            return self._error(qid, flags, dns.rcode.SERVFAIL, question, edns)
        try:
            name = dns.name.Name([label.lower() for label in labels] + [b""])
        except dns.name.NameTooLong:
            return self._error(qid, flags, dns.rcode.FORMERR, question, edns)
        entry = zone.lookup(name, qtype)
        if entry is None:
            return self._error(qid, flags, dns.rcode.REFUSED, question, edns)
        if edns:
            if not entry.wire_edns:
                entry.wire_edns = render_entry(entry, name, qtype, True, EDNS_PAYLOAD)
            wire = entry.wire_edns
        else:
            if not entry.wire:
                entry.wire = render_entry(entry, name, qtype, False)
            wire = entry.wire
        out_flags = QR | AA | (flags & RD) | entry.rcode
        if udp and len(wire) > (payload if edns else 512):
            # Too big for the client's buffer: the question alone, TC set; it retries over TCP.
            trunc = self._error(qid, flags, entry.rcode, question, edns)
            return struct.pack("!HH", qid, out_flags | TC) + trunc[4:]
        # ID, flags and the client's own spelling of the name (same length, so pointers hold).
        return struct.pack("!HH", qid, out_flags) + wire[4:12] + question + wire[12 + len(question):]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        try:
            out = self.responder.respond(data, udp=True)
        except Exception:  # noqa: BLE001 - one bad packet must never stop the server
            log.exception("query failed")
            return
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)


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


async def serve(responder: Responder, host: str, port: int, sock_udp=None, sock_tcp=None):
    """Start UDP and TCP listeners (or use given sockets); return (udp transport, tcp server)."""
    loop = asyncio.get_running_loop()
    if sock_udp is not None:
        udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(responder), sock=sock_udp)
    else:
        udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(responder), local_addr=(host, port))
    handler = lambda r, w: _tcp(responder, r, w)  # noqa: E731
    tcp = await (asyncio.start_server(handler, sock=sock_tcp) if sock_tcp is not None
                 else asyncio.start_server(handler, host, port))
    return udp, tcp





class DnsServer:
    """The responder served on one address over UDP and TCP, from a background thread."""

    def __init__(self, responder: Responder, host: str = "0.0.0.0", port: int = 53) -> None:
        self.responder = responder
        self.host = host
        self.port = port
        self.loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None

    def _sockets(self) -> tuple[socket.socket, socket.socket]:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.bind((self.host, self.port))
        port = udp.getsockname()[1]  # port 0: TCP takes the same number UDP got
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((self.host, port))
        tcp.listen(128)
        self.port = port
        return udp, tcp

    def start(self) -> "DnsServer":
        """Bind now (in the caller's network namespace), then serve from a thread."""
        udp, tcp = self._sockets()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(serve(self.responder, self.host, self.port, udp, tcp))
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, name="dns", daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread:
            self._thread.join(5)

"""The lab pods' server: says who answered and whom it saw, over TCP and UDP.

Every TCP connection gets one JSON line at once: {"pod", "client", "client_port", "port"}, then
each line the client sends is answered with the same line (so a test can hold a connection open
and see that it still reaches the same pod). Every UDP datagram gets that JSON back.
Standard library only: the lab starts one of these per pod.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--ports", required=True, help="comma-separated port list")
    args = parser.parse_args(argv)
    sel = selectors.DefaultSelector()
    for port in (int(p) for p in args.ports.split(",")):
        for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                sock = socket.socket(family, kind)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind((addr, port))
                except OSError:
                    sock.close()  # no IPv6 in this pod: serve IPv4 only
                    continue
                if kind == socket.SOCK_STREAM:
                    sock.listen(128)
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ, ("listen" if kind == socket.SOCK_STREAM else "udp", port))
    print("ready", flush=True)
    sys.stdout.close()
    answers: dict[socket.socket, bytes] = {}

    def hello(peer: tuple, port: int) -> bytes:
        return json.dumps({"pod": args.name, "client": peer[0], "client_port": peer[1], "port": port}).encode() + b"\n"

    while True:
        for key, _ in sel.select():
            sock, (role, port) = key.fileobj, key.data
            try:
                if role == "listen":
                    conn, peer = sock.accept()
                    answers[conn] = hello(peer, port)
                    conn.sendall(answers[conn])
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, ("conn", port))
                elif role == "udp":
                    data, peer = sock.recvfrom(65535)
                    sock.sendto(hello(peer, port), peer)
                else:
                    data = sock.recv(65535)
                    if data:
                        sock.sendall(answers[sock])
                    else:
                        raise ConnectionResetError
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                if role == "conn":
                    sel.unregister(sock)
                    answers.pop(sock, None)
                    sock.close()


if __name__ == "__main__":
    main()

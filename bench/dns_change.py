"""DNS at scale (the scale issue): how long a change to one headless service takes to show in
answers, against what the zone costs built whole (what every change cost before the ZoneBuilder,
and what a restart costs now), and whether answers stay as fast.

    .venv/bin/python bench/dns_change.py [--sizes 1000,10000,100000] [--endpoints 10]

Per size, in a child process of its own (its peak RSS is the responder's, cluster model
included): N headless services of `--endpoints` endpoints each, then
  * whole: the zone built from nothing (`build_zone`);
  * update: ZoneBuilder.update after one endpoint went away, comparing every object, and handed
    the Store's change set as the daemon does ("told"); median of 5 each;
  * visible: from the Store's change to the first answer that shows it, through the DNS daemon's
    own loop (`follow`, which coalesces bursts for 50 ms) in a thread; median of 5;
  * qps: A queries for real names through the sans-io Responder, on the zone built whole and on
    the zone after those updates (layered versions must not slow the hot path).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import dns.message  # noqa: E402

from benchutil import peak_rss_mb  # noqa: E402
from pyproxy.dns.daemon import follow  # noqa: E402
from pyproxy.dns.server import Responder  # noqa: E402
from pyproxy.dns.zone import ZoneBuilder, build_zone  # noqa: E402
from pyproxy.model.types import Endpoint, EndpointPort, EndpointSlice, Service, ServicePort  # noqa: E402
from pyproxy.sources.store import Store  # noqa: E402


def make_store(n: int, endpoints: int) -> Store:
    store = Store()
    base = int(ipaddress.ip_address("10.128.0.0"))
    for i in range(n):
        svc = Service("bench", f"svc-{i}", headless=True, ports=(ServicePort("http", "TCP", 80),))
        eps = tuple(Endpoint((ipaddress.ip_address(base + i * endpoints + j),)) for j in range(endpoints))
        store.cluster.add(svc)
        store.cluster.add(EndpointSlice("bench", f"svc-{i}-abc", f"svc-{i}", "IPv4", eps, (EndpointPort("http", "TCP", 8080),)))
    return store


class StoreSource:
    """What `follow` needs of a source, over a Store this bench changes itself."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def synced(self) -> bool:
        return True


def qps(responder: Responder, queries: list[bytes]) -> float:
    start = time.perf_counter()
    for q in queries:
        responder.respond(q)
    return len(queries) / (time.perf_counter() - start)


def addresses(responder: Responder, query: bytes) -> int:
    reply = dns.message.from_wire(responder.respond(query))
    return sum(len(rr) for rr in reply.answer)


def drop_one(store: Store, i: int) -> int:
    """svc-i loses its first endpoint; returns how many it has left."""
    key = f"bench/svc-{i}-abc"
    with store.lock:
        s = store.cluster.slices[key]
        store.set("EndpointSlice", key, EndpointSlice(s.namespace, s.name, s.service_name, s.address_type,
                                                      s.endpoints[1:], s.ports))
        store.changed.notify_all()
    return len(s.endpoints) - 1


def one(n: int, endpoints: int) -> dict:
    store = make_store(n, endpoints)
    out: dict = {"services": n, "endpoints": endpoints}
    start = time.perf_counter()
    whole = build_zone(store.cluster)
    out["whole_s"] = time.perf_counter() - start
    real = [dns.message.make_query(f"svc-{(i * 7919) % n}.bench.svc.cluster.local", "A").to_wire()
            for i in range(min(n, 20000))]
    responder = Responder(whole)
    qps(responder, real)  # rendered and cached once
    rounds = max(3, 300_000 // len(real))  # about 300,000 queries: a second or two of them
    out["qps_whole"] = qps(responder, real * rounds)
    del whole, responder

    builder = ZoneBuilder()
    builder.update(store.cluster)
    follower = store.follow()
    for told in (False, True):  # comparing every object, or handed the Store's change set
        updates = []
        for k in range(5):
            drop_one(store, (k * 104729 + told) % n)
            cluster, _, changed = follower.take()
            start = time.perf_counter()
            builder.update(cluster, changed if told else None)
            updates.append(time.perf_counter() - start)
        out["update_told_ms" if told else "update_ms"] = statistics.median(updates) * 1000

    del builder
    responder = Responder()
    stop = threading.Event()
    thread = threading.Thread(target=follow, args=(StoreSource(store), responder, "cluster.local", 5, stop))
    thread.start()
    try:
        deadline = time.monotonic() + 600
        while responder.zone is None:  # the daemon's first zone, built whole
            assert time.monotonic() < deadline, "the daemon built no zone"
            time.sleep(0.01)
        visible = []
        for k in range(5):
            i = (k * 7919 + 13) % n
            query = dns.message.make_query(f"svc-{i}.bench.svc.cluster.local", "A").to_wire()
            start = time.perf_counter()
            left = drop_one(store, i)
            while addresses(responder, query) != left:
                assert time.perf_counter() - start < 60, "the change never showed"
                time.sleep(0.001)
            visible.append(time.perf_counter() - start)
        out["visible_ms"] = statistics.median(visible) * 1000
        qps(responder, real)
        out["qps_updated"] = qps(responder, real * rounds)
    finally:
        stop.set()
        store.wake()
        thread.join()
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.endpoints)))
        return
    print(f"{'services':>9}{'zone whole s':>14}{'update ms':>11}{'told ms':>9}{'visible ms':>12}{'qps whole':>11}"
          f"{'qps updated':>13}{'peak RSS MB':>13}")
    for n in map(int, args.sizes.split(",")):
        proc = subprocess.run([sys.executable, __file__, "--one", str(n), "--endpoints", str(args.endpoints)],
                              capture_output=True, text=True)
        if proc.returncode:
            print(f"{n}: failed: {proc.stderr[-1500:]}", file=sys.stderr)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{n:>9,}{r['whole_s']:>14.2f}{r['update_ms']:>11.1f}{r['update_told_ms']:>9.1f}{r['visible_ms']:>12.0f}"
              f"{r['qps_whole']:>11,.0f}"
              f"{r['qps_updated']:>13,.0f}{r['peak_rss_mb']:>13,.0f}", flush=True)
    print("targets (100,000 headless services): a change visible within 100 ms; qps unchanged")


if __name__ == "__main__":
    main()

"""DNS answer caches under a flood of random names (bad-input issue, finding 5): peak RSS of the
responder after N random names under svc.cluster.local, beside the same run's figure for the
real names alone, and the qps of real names afterwards (they must stay cached).

    .venv/bin/python bench/dns_cache.py [--names 1000000] [--services 1000]

In process, through the sans-io Responder (no sockets: this measures the caches, not the network).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import dns.message  # noqa: E402

from dns_perf import cluster_objects  # noqa: E402
from pyproxy.dns.server import Responder  # noqa: E402
from pyproxy.dns.zone import build_zone  # noqa: E402
from pyproxy.model import parse_objects  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def peak_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def qps(responder: Responder, queries: list[bytes]) -> float:
    start = time.monotonic()
    for q in queries:
        responder.respond(q)
    return len(queries) / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--names", type=int, default=1_000_000)
    parser.add_argument("--services", type=int, default=1000)
    args = parser.parse_args()
    responder = Responder()
    responder.zone = zone = build_zone(parse_objects(cluster_objects(args.services)))
    real = [dns.message.make_query(f"svc-{i}.bench.svc.cluster.local", "A").to_wire() for i in range(args.services)]
    before_qps = qps(responder, real * 5)
    base = rss_mb()
    print(f"zone of {args.services} headless services: RSS {base:.0f} MB, real-name qps {before_qps:,.0f}")
    rng = random.Random(1)
    header = dns.message.make_query("x.bench.svc.cluster.local", "A").to_wire()[:12]
    start = time.monotonic()
    for i in range(args.names):
        label = f"r{rng.getrandbits(40):x}".encode()
        # the question's wire form: the random label, then bench.svc.cluster.local, type A, class IN
        question = bytes([len(label)]) + label + b"\x05bench\x03svc\x07cluster\x05local\x00\x00\x01\x00\x01"
        responder.respond(header + question)
    took = time.monotonic() - start
    after_qps = qps(responder, real * 5)
    print(f"after {args.names:,} random names ({args.names / took:,.0f} q/s): RSS {rss_mb():.0f} MB "
          f"(+{rss_mb() - base:.0f} MB), peak {peak_mb():.0f} MB; cached negative answers "
          f"{len(zone.negative_wire)}; real-name qps {after_qps:,.0f}")


if __name__ == "__main__":
    main()

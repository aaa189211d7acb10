"""Stale UDP conntrack cleanup at scale: the netlink path (pyproxy.netlink.conntrack) beside the
old `conntrack` tool path (list as text, one `conntrack -D` per stale flow), in the same run.

    .venv/bin/python bench/conntrack_cleanup.py [--flows 100000] [--stale 1000] [--no-tool]

In a namespace made here: a UDP Service (10.96.0.10:53) with 10 endpoints, `--flows` UDP flows
to it from distinct clients; `--stale` of them point at an 11th endpoint that is no longer one.
Per path: the time of one cleanup (list + decide + delete), the extra peak memory it needed, and
a check that exactly the stale flows went (the table is listed after). Two netlink paths: after
the endpoint change (a partial sync: the cleaner saw the 11th endpoint before and asks the kernel
only for flows answered from it), and a look at every UDP flow (a full sync or a restart).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import resource
import subprocess
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from benchutil import ns_add, ns_del  # noqa: E402
from pyproxy import netns  # noqa: E402
from pyproxy.conntrack import ConntrackCleaner, Flow, stale_flows  # noqa: E402
from pyproxy.netlink.conntrack import Conntrack  # noqa: E402
from pyproxy.model import parse_objects  # noqa: E402
from pyproxy.view import build_view  # noqa: E402

FRONTEND = ("10.96.0.10", 53)
ENDPOINTS = [f"10.244.1.{i}" for i in range(2, 12)]
GONE = "10.244.1.99"
_FIELD = re.compile(r"(src|dst|sport|dport)=(\S+)")


def view(endpoints=ENDPOINTS):
    return build_view(parse_objects([
        {"kind": "Service", "metadata": {"namespace": "ns", "name": "dns"},
         "spec": {"clusterIP": FRONTEND[0], "ports": [{"port": 53, "protocol": "UDP"}]}},
        {"kind": "EndpointSlice", "addressType": "IPv4",
         "metadata": {"namespace": "ns", "name": "dns-a", "labels": {"kubernetes.io/service-name": "dns"}},
         "endpoints": [{"addresses": [ip]} for ip in endpoints], "ports": [{"name": "", "port": 53, "protocol": "UDP"}]},
    ]), "n1")


def client(i: int) -> str:
    return str(ipaddress.ip_address("10.8.0.0") + i)


def fill(ct: Conntrack, flows: int, stale: int) -> None:
    entries = []
    for i in range(flows):
        target = GONE if i < stale else ENDPOINTS[i % len(ENDPOINTS)]
        entries.append(((client(i), FRONTEND[0], 40000, 53), (target, client(i), 53, 40000)))
    ct.create(entries, timeout=3600)


def tool_path(v) -> int:
    """What pyproxy did before: `conntrack -L` as text, then a process per stale flow."""
    text = subprocess.run(["conntrack", "-L", "-f", "ipv4", "-p", "udp"], capture_output=True, text=True).stdout
    flows = []
    for line in text.splitlines():
        fields = _FIELD.findall(line)
        if len(fields) >= 8:
            (_, s), (_, d), (_, sp), (_, dp), (_, rs), _, (_, rsp), _ = fields[:8]
            flows.append(Flow(s, d, int(sp), int(dp), rs, int(rsp)))
    stale = stale_flows(v, flows, 4)
    for f in stale:
        subprocess.run(["conntrack", "-D", "-p", "udp", "--orig-src", f.orig_src, "--orig-dst", f.orig_dst,
                        "--orig-port-src", str(f.orig_sport), "--orig-port-dst", str(f.orig_dport)], capture_output=True)
    return len(stale)


def measure(label: str, run, ct: Conntrack, flows: int, stale: int, memory: bool = True, prepare=None) -> None:
    prepare = prepare or (lambda: None)
    peak = float("nan")
    if memory:  # a run of its own: tracemalloc slows allocation down many times
        fill(ct, flows, stale)
        prepare()
        tracemalloc.start()
        run()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        ct.delete([o for o, r in ct.flows(4, "udp")])
    fill(ct, flows, stale)
    before = {o for o, r in ct.flows(4, "udp")}
    prepare()
    start = time.monotonic()
    removed = run()
    took = time.monotonic() - start
    after = {o for o, r in ct.flows(4, "udp")}
    gone = before - after
    exact = len(gone) == stale and all(int(ipaddress.ip_address(src)) - int(ipaddress.ip_address("10.8.0.0")) < stale
                                        for src, *_ in gone)
    print(f"{label:<22} {took * 1000:>9.0f} ms  {peak / 2**20:>7.1f} MB extra  removed {removed}  "
          f"exactly the stale ones: {'yes' if exact else 'NO'}", flush=True)
    ct.delete(list(after))  # empty the table for the next path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flows", type=int, default=100000)
    parser.add_argument("--stale", type=int, default=1000)
    parser.add_argument("--no-tool", action="store_true", help="leave out the conntrack tool path (minutes)")
    args = parser.parse_args()
    ns = ns_add()
    try:
        subprocess.run(["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW",
                        "-j", "ACCEPT"], check=True)  # conntrack is on in a namespace only when a rule needs it
        v = view()
        with netns.entered(ns):
            ct = Conntrack()
            cleaner = ConntrackCleaner(4)
            print(f"{args.flows} UDP flows, {args.stale} stale")
            def seen_before() -> None:  # the sync before: the 11th endpoint was one
                cleaner.clean(view([*ENDPOINTS, GONE]), full=True)

            measure("netlink, partial sync", lambda: cleaner.clean(v), ct, args.flows, args.stale, prepare=seen_before)
            measure("netlink, full sync", lambda: cleaner.clean(v, full=True), ct, args.flows, args.stale)
            if not args.no_tool:
                measure("conntrack tool (old)", lambda: tool_path(v), ct, args.flows, args.stale, memory=False)
        print(f"peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    finally:
        ns_del(ns)


if __name__ == "__main__":
    main()

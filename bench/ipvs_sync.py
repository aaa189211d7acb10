"""IPVS backend benchmark, beside the iptables backend, in the same qemu guest (this machine's
kernel has no ip_vs: tests/vm/qemu.py boots Debian's). Emulation (TCG) slows everything, so the
figures that mean something are the ratios to iptables measured in the same run.

    .venv/bin/python bench/ipvs_sync.py [--sizes 1000,10000] [--cpus 2] [--memory 4096]

Per size (N services of 10 endpoints, a NodePort on every tenth, as bench/iptables_sync.py),
each backend in a namespace of its own, through the Proxier as the daemon syncs: the full sync
(IPVS: virtual and real servers, kube-ipvs0 addresses, ipsets, iptables chains) and the median
of five one-endpoint changes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from nftables_sync import measure  # noqa: E402  (through the Proxier, as the daemon syncs)


def in_guest(sizes: list[int]) -> None:
    import subprocess

    for n in sizes:
        for mode in ("ipvs", "iptables"):
            proc = subprocess.run([sys.executable, __file__, "--one", mode, str(n)], capture_output=True, text=True)
            if proc.returncode:
                print(f"{mode} {n} failed: {proc.stderr[-1500:]}", flush=True)
                continue
            print("ROW " + proc.stdout.strip().splitlines()[-1], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--memory", type=int, default=4096)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]))))
        return
    sizes = [int(x) for x in args.sizes.split(",") if x]
    if args.guest:
        in_guest(sizes)
        return
    from tests.vm import qemu

    status, console = qemu.run([sys.executable, __file__, "--guest", "--sizes", args.sizes], args.cpus, args.memory,
                               timeout=7200, echo=lambda line: line.startswith(("ROW", "ipvs", "iptables")) and
                               print(line, file=sys.stderr, flush=True))
    rows = [json.loads(line.split("ROW ", 1)[1]) for line in console.splitlines() if "ROW " in line]
    print("in a qemu guest (TCG), Debian kernel; ratios are to iptables-legacy in the same guest")
    print(f"{'backend':10}{'services':>9}{'full sync s':>13}{'one change ms':>15}{'peak RSS MB':>13}")
    for r in rows:
        print(f"{r['mode']:10}{r['services']:>9}{r['full_s']:>13.2f}{r['change_s'] * 1000:>15.0f}{r['peak_rss_mb']:>13.0f}")
    for n in sizes:
        ipvs = next((r for r in rows if r["mode"] == "ipvs" and r["services"] == n), None)
        ipt = next((r for r in rows if r["mode"] == "iptables" and r["services"] == n), None)
        if ipvs and ipt:
            print(f"{n} services: ipvs/iptables full sync {ipvs['full_s'] / ipt['full_s']:.2f}x, "
                  f"one change {ipvs['change_s'] / ipt['change_s']:.2f}x")
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()

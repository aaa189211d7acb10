"""CNI ADD/DEL latency: pyproxy-bridge beside the reference bridge + host-local, same run.

    .venv/bin/python bench/cni_latency.py [--runs 100] [--cycles 200]

Prints p50/p95 of ADD and DEL for both plugins and the bare interpreter start-up (the floor a
Python plugin cannot go under), then runs ADD/DEL cycles (every fifth DEL after the pod's netns
was deleted) and reports anything left behind. Everything happens in namespaces made here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pyproxy import netns  # noqa: E402
from pyproxy.lab.lab import cni_bin_dir  # noqa: E402

OURS = os.path.join(cni_bin_dir(), "pyproxy-bridge")
REFERENCE = "/usr/lib/cni/bridge"


def ns_add(name: str) -> None:
    subprocess.run(["ip", "netns", "add", name], check=True)


def ns_del(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], check=False)


def timed(plugin: str, command: str, conf: dict, host: str, cid: str, pod: str) -> float:
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
           "CNI_NETNS": f"/run/netns/{pod}", "CNI_IFNAME": "eth0", "CNI_PATH": f"{cni_bin_dir()}:/usr/lib/cni"}
    data = json.dumps(conf).encode()
    with netns.entered(host):
        start = time.perf_counter()
        proc = subprocess.run([plugin], input=data, capture_output=True, env=env)
        elapsed = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{plugin} {command}: {proc.stdout.decode()} {proc.stderr.decode()}")
    return elapsed


def conf_for(data_dir: str) -> dict:
    return {"cniVersion": "1.0.0", "name": "benchnet", "type": "bridge", "bridge": "cni0", "isGateway": True,
            "isDefaultGateway": True, "hairpinMode": True,
            "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": "10.55.0.0/16"}]]}}


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


def measure(plugin: str, runs: int, tag: str) -> tuple[list[float], list[float]]:
    host = f"pxb-{tag}-host"
    ns_add(host)
    adds, dels = [], []
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            conf = conf_for(data_dir)
            for i in range(runs):
                pod = f"pxb-{tag}-pod"
                ns_add(pod)
                adds.append(timed(plugin, "ADD", conf, host, f"c{i}", pod))
                dels.append(timed(plugin, "DEL", conf, host, f"c{i}", pod))
                ns_del(pod)
    finally:
        ns_del(host)
    return adds, dels


def bare_startup(runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        out.append(time.perf_counter() - start)
    return out


def leak_cycles(cycles: int) -> dict:
    tag = uuid.uuid4().hex[:4]
    host = f"pxb-{tag}-host"
    ns_add(host)
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            conf = conf_for(data_dir)
            for i in range(cycles):
                pod = f"pxb-{tag}-p"
                ns_add(pod)
                timed(OURS, "ADD", conf, host, f"c{i}", pod)
                if i % 5 == 4:  # the runtime lost the namespace before DEL
                    ns_del(pod)
                    timed(OURS, "DEL", conf, host, f"c{i}", pod)
                else:
                    timed(OURS, "DEL", conf, host, f"c{i}", pod)
                    ns_del(pod)
            files = [f for f in os.listdir(os.path.join(data_dir, "benchnet"))
                     if not f.startswith(("lock", "last_reserved"))]
        veths = subprocess.run(["ip", "-n", host, "-o", "link", "show", "type", "veth"], capture_output=True,
                               text=True).stdout.strip().splitlines()
    finally:
        ns_del(host)
    leftover_ns = [n for n in os.listdir("/run/netns") if n.startswith(f"pxb-{tag}")]
    return {"cycles": cycles, "address_files_left": len(files), "veths_left": len(veths), "netns_left": len(leftover_ns)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--cycles", type=int, default=200)
    args = parser.parse_args()
    bare = bare_startup(args.runs)
    ours_add, ours_del = measure(OURS, args.runs, "o")
    ref_add, ref_del = measure(REFERENCE, args.runs, "r")
    print(f"CNI latency over {args.runs} runs (ms)      p50      p95")
    print(f"  bare interpreter start-up          {pct(bare, 50):7.1f}  {pct(bare, 95):7.1f}")
    for label, values in (("pyproxy-bridge ADD", ours_add), ("pyproxy-bridge DEL", ours_del),
                          ("reference bridge ADD", ref_add), ("reference bridge DEL", ref_del)):
        print(f"  {label:<34} {pct(values, 50):7.1f}  {pct(values, 95):7.1f}")
    over = pct(ours_add, 50) - pct(bare, 50)
    print(f"ADD p50 above bare start-up: {over:.1f} ms (target <= 60 ms)")
    print("leak check:", json.dumps(leak_cycles(args.cycles)))


if __name__ == "__main__":
    main()

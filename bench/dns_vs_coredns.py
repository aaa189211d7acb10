"""dnsperf against upstream CoreDNS (kubernetes plugin) and `pyproxy dns serve`, in one run, both
following the same kube-apiserver in a lab with a real control plane.

    apt-get install dnsperf             # once; not needed by the test suite
    .venv/bin/python bench/dns_vs_coredns.py [--services 1000] [--seconds 10]

The cluster: N headless Services of 10 endpoints (bench/dns_perf.py's), written through the API.
The queries: every service (A), SRV for every tenth, NXDOMAIN names, shuffled. Both servers
listen in one lab namespace and dnsperf runs there; each is measured alone (the other stopped
meanwhile is not needed: they take turns, the idle one uses no CPU).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from dns_perf import cluster_objects, queries  # noqa: E402
from pyproxy.lab import Lab  # noqa: E402
from pyproxy.lab.proxies import deploy_pyproxy, start_coredns, start_pyproxy_dns  # noqa: E402
from pyproxy.lab.spec import parse_spec  # noqa: E402

SPEC = {"name": "bdns", "controlPlane": "kubernetes", "nodes": [{"name": "n1", "podCIDR": "10.244.1.0/24"}],
        "pods": []}


def dnsperf(lab: Lab, ns: str, port: int, query_file: str, seconds: int) -> dict:
    import re
    import subprocess

    out = subprocess.run(["ip", "netns", "exec", ns, "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", query_file,
                          "-l", str(seconds), "-c", "4", "-q", "200", "-t", "2"], capture_output=True, text=True).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    latency = re.search(r"Average Latency \(s\):\s+([\d.]+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    return {"qps": qps, "avg ms": float(latency.group(1)) * 1000, "lost": int(lost.group(1)) if lost else 0}


def wait_answering(ns: str, port: int, name: str, timeout: float = 60) -> None:
    import socket

    import dns.message

    from pyproxy import netns

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with netns.entered(ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.settimeout(0.5)
            try:
                sock.sendto(dns.message.make_query(name, "A").to_wire(), ("127.0.0.1", port))
                if dns.message.from_wire(sock.recv(65535)).answer:
                    return
            except OSError:
                pass
        time.sleep(0.3)
    raise RuntimeError(f"port {port}: no answer for {name}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    if not shutil.which("dnsperf"):
        sys.exit("dnsperf is not installed: apt-get install dnsperf")
    work = tempfile.mkdtemp(prefix="pyproxy-dns-vs-")
    query_file = os.path.join(work, "queries.txt")
    with open(query_file, "w") as f:
        f.write(queries(args.services))
    lab = Lab(parse_spec(SPEC)).up()
    try:
        api = lab.cp.api
        api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}})
        kube, _ = deploy_pyproxy(lab)
        for obj in cluster_objects(args.services):
            obj.setdefault("apiVersion", "v1" if obj["kind"] == "Service" else "discovery.k8s.io/v1")
            api.apply(obj)
        ns = lab.add_shadow("dns")
        last = f"svc-{args.services - 1}.bench.svc.cluster.local"
        results = {}
        for who, start, port in (("coredns", start_coredns, 1053), ("pyproxy", start_pyproxy_dns, 2053)):
            proc = start(lab, ns, port) if who == "coredns" else start(lab, ns, kube, port)
            wait_answering(ns, port, last)
            results[who] = dnsperf(lab, ns, port, query_file, args.seconds)
            lab.processes.stop(proc.name)
            print(f"{who:<8} " + ", ".join(f"{k} {v:.1f}" for k, v in results[who].items()), flush=True)
        print(f"\n{args.services} headless services x 10: pyproxy / CoreDNS qps "
              f"{results['pyproxy']['qps'] / results['coredns']['qps']:.2f}x, average latency "
              f"{results['pyproxy']['avg ms'] / results['coredns']['avg ms']:.2f}x")
    finally:
        lab.down()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

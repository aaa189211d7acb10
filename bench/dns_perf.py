"""DNS benchmark: dnsperf against `pyproxy dns serve` and, in the same run, against NSD (a C
authoritative server from Debian) serving the very same zone, over UDP on loopback.

    apt-get install dnsperf nsd        # once; not needed by the test suite
    .venv/bin/python bench/dns_perf.py [--services 1000] [--seconds 10]

The zone: N headless Services of 10 endpoints each (A answers of 10 records). The queries: every
service name (A), plus SRV and NXDOMAIN names, shuffled. dnsperf runs beside the server on this
2-core machine; both servers are started and stopped here, by PID.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, ROOT)

from pyproxy.dns.zone import build_zone, name_of  # noqa: E402
from pyproxy.model import parse_objects  # noqa: E402


def cluster_objects(n: int) -> list[dict]:
    objs = []
    for i in range(n):
        objs.append({"kind": "Service", "metadata": {"namespace": "bench", "name": f"svc-{i}"},
                     "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}})
        objs.append({"kind": "EndpointSlice", "addressType": "IPv4",
                     "metadata": {"namespace": "bench", "name": f"svc-{i}-x",
                                  "labels": {"kubernetes.io/service-name": f"svc-{i}"}},
                     "endpoints": [{"addresses": [f"10.{128 + i // 2500}.{(i * 10 + j) // 250 % 256}.{(i * 10 + j) % 250 + 1}"]}
                                   for j in range(10)],
                     "ports": [{"name": "http", "port": 8080}]})
    return objs


def master_file(objs: list[dict]) -> str:
    """The same records as a zone file for NSD (forward zone only)."""
    zone = build_zone(parse_objects(objs))
    lines = [f"$ORIGIN {zone.origin.to_text()}", f"$TTL {zone.ttl}",
             f"@ IN SOA {zone.soa[0].mname} {zone.soa[0].rname} 1 7200 1800 86400 {zone.ttl}",
             f"@ IN NS ns.dns.{zone.origin.to_text()}", "ns.dns IN A 127.0.0.1"]
    for wire, types in zone.records.items():
        name = name_of(wire)
        if not name.is_subdomain(zone.origin):
            continue
        for rdtype, texts in types.items():
            if rdtype == 6:  # SOA, written above
                continue
            import dns.rdatatype

            for text in texts:
                lines.append(f"{name.to_text()} IN {dns.rdatatype.to_text(rdtype)} {text}")
    return "\n".join(lines) + "\n"


def queries(n: int) -> str:
    lines = [f"svc-{i}.bench.svc.cluster.local A" for i in range(n)]
    lines += [f"_http._tcp.svc-{i}.bench.svc.cluster.local SRV" for i in range(0, n, 10)]
    lines += [f"missing-{i}.bench.svc.cluster.local A" for i in range(0, n, 10)]
    random.Random(1).shuffle(lines)
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_udp(port: int, timeout: float = 10) -> None:
    import dns.message
    import dns.query

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = dns.query.udp(dns.message.make_query("svc-0.bench.svc.cluster.local", "A"), "127.0.0.1", port=port,
                              timeout=0.5)
            if r.answer:
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no DNS answer on port {port}")


def dnsperf(port: int, query_file: str, seconds: int) -> dict:
    out = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", query_file, "-l", str(seconds),
                          "-c", "4", "-q", "200", "-t", "2"], capture_output=True, text=True).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    m = re.search(r"Average Latency \(s\):\s+([\d.]+) \(min ([\d.]+), max ([\d.]+)\)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    return {"qps": qps, "avg_ms": float(m.group(1)) * 1000, "max_ms": float(m.group(3)) * 1000,
            "lost": int(lost.group(1)) if lost else 0}


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    for tool in ("dnsperf", "nsd"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is not installed: apt-get install dnsperf nsd")
    work = tempfile.mkdtemp(prefix="pyproxy-dnsperf-")
    objs = cluster_objects(args.services)
    with open(os.path.join(work, "cluster.yaml"), "w") as f:
        yaml.safe_dump({"kind": "List", "items": objs}, f)
    with open(os.path.join(work, "queries.txt"), "w") as f:
        f.write(queries(args.services))
    with open(os.path.join(work, "cluster.local.zone"), "w") as f:
        f.write(master_file(objs))
    results = {}

    port = free_port()
    ours = subprocess.Popen([sys.executable, "-m", "pyproxy", "dns", "serve", "-f", os.path.join(work, "cluster.yaml"),
                             "--listen", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=ROOT)
    try:
        wait_udp(port)
        results["pyproxy"] = dnsperf(port, os.path.join(work, "queries.txt"), args.seconds)
    finally:
        stop(ours)

    port = free_port()
    conf = os.path.join(work, "nsd.conf")
    with open(conf, "w") as f:
        f.write(f"server:\n  ip-address: 127.0.0.1@{port}\n  username: \"\"\n  chroot: \"\"\n  database: \"\"\n"
                f"  zonesdir: \"{work}\"\n  pidfile: \"{work}/nsd.pid\"\n  xfrdfile: \"{work}/xfrd.state\"\n"
                f"  zonelistfile: \"{work}/zone.list\"\n  server-count: 1\n  verbosity: 0\n"
                f"  rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\n"  # no rate limiting of a benchmark
                f"remote-control:\n  control-enable: no\n"
                f"zone:\n  name: cluster.local\n  zonefile: cluster.local.zone\n")
    nsd = subprocess.Popen(["/usr/sbin/nsd", "-d", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_udp(port)
        results["nsd"] = dnsperf(port, os.path.join(work, "queries.txt"), args.seconds)
    finally:
        stop(nsd)
    shutil.rmtree(work, ignore_errors=True)

    print(f"dnsperf, {args.services} headless services x 10 endpoints, UDP, {args.seconds}s, 4 clients, "
          f"200 outstanding")
    print(f"{'server':>10}{'queries/s':>12}{'avg ms':>9}{'max ms':>9}{'lost':>7}")
    for name, r in results.items():
        print(f"{name:>10}{r['qps']:>12.0f}{r['avg_ms']:>9.3f}{r['max_ms']:>9.1f}{r['lost']:>7}")
    if "nsd" in results:
        print(f"pyproxy / nsd = {results['pyproxy']['qps'] / results['nsd']['qps']:.2f} "
              f"(targets: >= 30,000 q/s and >= 0.50 of the C server)")


if __name__ == "__main__":
    main()

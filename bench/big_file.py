"""A big manifests file (bad-input issue, finding 3): time and peak RSS of `pyproxy dump` on a
~50 MB `kind: List` of N services (two ports each) and their EndpointSlices (three endpoints),
beside baselines of the same run: the file's own size, and with --yaml-baseline PyYAML's C
loader reading the same file whole into Python objects (what any Python tool pays to hold it;
4.5 GB and 5 minutes for 74 MB here, so not by default).

    .venv/bin/python bench/big_file.py [--services 50000] [--backend iptables|nftables|ipvs] [--yaml-baseline]

Each measurement is a child process; its peak RSS is read by a fresh wrapper (RUSAGE_CHILDREN of
exactly one child).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

PYPROXY = os.path.join(os.path.dirname(sys.executable), "pyproxy")
WRAPPER = ("import resource, subprocess, sys\n"
           "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
           "sys.stderr.write(f'PEAK {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n')\n"
           "sys.exit(code)\n")


def write_cluster(path: str, services: int) -> None:
    with open(path, "w") as f:
        f.write("apiVersion: v1\nkind: List\nitems:\n")
        f.write("- apiVersion: v1\n  kind: Node\n  metadata: {name: node-a}\n  spec: {podCIDR: 10.128.0.0/24}\n"
                "  status: {addresses: [{type: InternalIP, address: 172.18.0.11}]}\n")
        for i in range(services):
            ip = f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}"
            f.write(f"- apiVersion: v1\n  kind: Service\n  metadata:\n    name: svc-{i}\n    namespace: bench\n"
                    f"    labels: {{app: svc-{i}, tier: backend}}\n  spec:\n    type: ClusterIP\n"
                    f"    clusterIP: {ip}\n    clusterIPs: [{ip}]\n    selector: {{app: svc-{i}}}\n    ports:\n"
                    f"    - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}\n"
                    f"    - {{name: metrics, port: 9090, targetPort: 9090, protocol: TCP}}\n")
            f.write(f"- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata:\n"
                    f"    name: svc-{i}-abcde\n    namespace: bench\n"
                    f"    labels: {{kubernetes.io/service-name: svc-{i}}}\n  addressType: IPv4\n  ports:\n"
                    f"  - {{name: http, port: 8080, protocol: TCP}}\n  - {{name: metrics, port: 9090, protocol: TCP}}\n"
                    f"  endpoints:\n")
            for e in range(3):
                f.write(f"  - addresses: [10.{128 + e}.{i // 256 % 256}.{i % 256}]\n"
                        f"    conditions: {{ready: true, serving: true, terminating: false}}\n"
                        f"    nodeName: node-{'ab'[e % 2]}\n")


def measure(argv: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one child."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *argv], capture_output=True, text=True)
    took = time.monotonic() - start
    if proc.returncode:
        raise SystemExit(f"{argv[0]} failed: {proc.stderr[-500:]}")
    return took, int(proc.stderr.rsplit("PEAK ", 1)[1].split()[0]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=50000)
    parser.add_argument("--backend", default="iptables", choices=["iptables", "nftables", "ipvs"])
    parser.add_argument("--yaml-baseline", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cluster.yaml")
        write_cluster(path, args.services)
        size = os.path.getsize(path) / 2 ** 20
        yaml_s = yaml_mb = 0.0
        if args.yaml_baseline:
            yaml_s, yaml_mb = measure([sys.executable, "-c",
                                       "import sys, yaml; yaml.load(open(sys.argv[1]), Loader=yaml.CSafeLoader)", path])
        dump_s, dump_mb = measure([PYPROXY, "dump", "-f", path, "--node", "node-a", "--backend", args.backend])
    print(f"file: {args.services:,} services + slices, {size:.1f} MB")
    print(f"{'':26}{'time':>10}{'peak RSS':>12}{'RSS / file size':>18}")
    if yaml_mb:
        print(f"{'PyYAML CSafeLoader (base)':26}{yaml_s:9.1f}s{yaml_mb:10.0f} MB{yaml_mb / size:17.1f}x")
    print(f"{'pyproxy dump ' + args.backend:26}{dump_s:9.1f}s{dump_mb:10.0f} MB{dump_mb / size:17.1f}x")
    if yaml_mb:
        print(f"dump / PyYAML: time {dump_s / yaml_s:.2f}x, peak RSS {dump_mb / yaml_mb:.2f}x")
    print("target: peak RSS within a few times the file's size (<= 4x)")


if __name__ == "__main__":
    main()

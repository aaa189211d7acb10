"""Control-plane benchmark, against tests/apiserver.py (the stand-in API server).

    .venv/bin/python bench/api_latency.py [--sizes 1000,10000] [--changes 30]

1. Network programming latency: the daemon (API source, default minSyncPeriod 1 s) runs in a
   namespace made here; EndpointSlice changes carry `last-change-trigger-time` = the moment they
   are written to the API server, and the daemon records when the rules holding them are in the
   kernel. Prints initial sync time, p50/p99 latency.
2. LIST and model build for N services / 10N endpoints, each path in its own process (peak RSS):
   pyproxy's raw-JSON reflector beside the `kubernetes` client's generated models.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, ROOT)

from benchutil import peak_rss_mb  # noqa: E402
from pyproxy import netns  # noqa: E402
from pyproxy.config import ProxyConfig  # noqa: E402
from tests.apiserver import FakeApiServer  # noqa: E402


def service(i: int) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "bench", "name": f"svc-{i}"},
            "spec": {"clusterIP": f"10.{96 + i // 65000}.{(i // 250) % 256}.{i % 250 + 1}",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}


def endpoint_slice(i: int, generation: int = 0) -> dict:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"namespace": "bench", "name": f"svc-{i}-abc", "labels": {"kubernetes.io/service-name": f"svc-{i}"},
                         "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": now}},
            "endpoints": [{"addresses": [f"10.{128 + (i * 10 + j) // 65000}.{((i * 10 + j) // 250) % 256}."
                                         f"{(i * 10 + j) % 250 + 1 + generation % 3}"],
                           "conditions": {"ready": True}, "nodeName": f"node-{j % 3}"} for j in range(10)],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def populate(api: FakeApiServer, n: int) -> None:
    api.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-0"},
               "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.11"}]}})
    for i in range(n):
        api.apply(service(i))
        api.apply(endpoint_slice(i))


def programming_latency(n: int, changes: int) -> dict:
    from pyproxy.daemon import Daemon
    from pyproxy.proxier import Proxier
    from pyproxy.sources.kube import KubeClient, KubeSource

    ns = f"pxb-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)  # the API server listens there
    api = FakeApiServer(netns_name=ns)
    try:
        populate(api, n)
        kubeconfig = api.kubeconfig(tempfile.mktemp(suffix=".kubeconfig"))
        config = ProxyConfig(healthz_bind_address="", metrics_bind_address="")
        result: dict = {}

        def run() -> None:
            with netns.entered(ns):  # threads started from here (reflectors) live in ns too
                daemon = Daemon(KubeSource(KubeClient(kubeconfig), "node-0"), Proxier("node-0", config), config,
                                serve_http=False)
                result["daemon"] = daemon
                daemon.run()

        start = time.monotonic()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        while "daemon" not in result or not result["daemon"].syncs:
            time.sleep(0.05)
        initial = time.monotonic() - start
        daemon = result["daemon"]
        daemon.latencies.clear()
        for k in range(changes):
            time.sleep(random.uniform(0.3, 1.5))
            api.apply(endpoint_slice(random.randrange(n), k + 1))
        deadline = time.monotonic() + 30
        while len(daemon.latencies) < changes and time.monotonic() < deadline:
            time.sleep(0.05)
        daemon.stop()
        thread.join(30)
        lat = sorted(daemon.latencies)
        return {"services": n, "initial_sync_s": initial, "changes": len(lat),
                "p50_s": statistics.median(lat), "p99_s": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
                "variant": daemon.proxier.backends[4].variant}
    finally:
        api.stop()
        subprocess.run(["ip", "netns", "del", ns], check=False)


def list_child(path: str, kubeconfig: str) -> None:
    start = time.perf_counter()
    if path == "raw":
        from pyproxy.sources.kube import ENDPOINT_SLICES, SERVICES, KubeClient, Reflector
        from pyproxy.sources.store import Store

        client, store = KubeClient(kubeconfig), Store()
        for res in (SERVICES, ENDPOINT_SLICES):
            Reflector(client, res, store).list()
        count = (len(store.cluster.services), sum(len(s.endpoints) for s in store.cluster.slices.values()))
    else:
        from kubernetes import client, config

        config.load_kube_config(config_file=kubeconfig)

        def paged(list_fn) -> list:
            items, cont = [], None
            while True:
                page = list_fn(limit=500, _continue=cont)
                items += page.items
                cont = page.metadata._continue
                if not cont:
                    return items

        svcs = paged(client.CoreV1Api().list_service_for_all_namespaces)
        eps = paged(client.DiscoveryV1Api().list_endpoint_slice_for_all_namespaces)
        count = (len(svcs), sum(len(s.endpoints or []) for s in eps))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"path": path, "seconds": time.perf_counter() - start, "cpu_s": usage.ru_utime + usage.ru_stime,
                      "services": count[0], "endpoints": count[1], "peak_rss_mb": peak_rss_mb()}))


def list_cost(n: int) -> list[dict]:
    api = FakeApiServer()
    try:
        populate(api, n)
        kubeconfig = api.kubeconfig(tempfile.mktemp(suffix=".kubeconfig"))
        rows = []
        for path in ("raw", "generated"):
            proc = subprocess.run([sys.executable, __file__, "--list-child", path, kubeconfig], capture_output=True,
                                  text=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        return rows
    finally:
        api.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--changes", type=int, default=30)
    parser.add_argument("--list-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.list_child:
        list_child(*args.list_child)
        return
    print("network programming latency (API change -> rules in the kernel), minSyncPeriod 1s")
    print(f"{'services':>9}{'variant':>8}{'initial sync s':>16}{'changes':>9}{'p50 s':>8}{'p99 s':>8}")
    for n in map(int, args.sizes.split(",")):
        r = programming_latency(n, args.changes)
        print(f"{r['services']:>9}{r['variant']:>8}{r['initial_sync_s']:>16.2f}{r['changes']:>9}{r['p50_s']:>8.3f}"
              f"{r['p99_s']:>8.3f}", flush=True)
    n = max(map(int, args.sizes.split(",")))
    print(f"\nLIST + model for {n} services / {n * 10} endpoints")
    print(f"{'path':>10}{'wall s':>8}{'client CPU s':>14}{'peak RSS MB':>13}")
    for r in list_cost(n):
        print(f"{r['path']:>10}{r['seconds']:>8.2f}{r['cpu_s']:>14.2f}{r['peak_rss_mb']:>13.0f}")
    print("targets at 10,000 services: p99 <= 1 s, initial sync <= 5 s, RSS <= 250 MB")


if __name__ == "__main__":
    main()

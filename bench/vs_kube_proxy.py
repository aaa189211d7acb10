"""pyproxy beside upstream's kube-proxy (same Kubernetes version, built here), in one run.

    .venv/bin/python bench/vs_kube_proxy.py [--sizes 1000,10000] [--modes legacy,nft,nftables]

A lab with a real control plane (etcd, kube-apiserver, kube-controller-manager); N Services of
10 endpoints each (a NodePort on every tenth) are written through the API as selector-less
Services with EndpointSlices. Per mode, kube-proxy and pyproxy each program node n1 from a
namespace of their own (fresh ones per mode), one after the other so they never share the CPU:

  initial sync   process start -> the first sync with every service done (its
                 kubeproxy_sync_proxy_rules_last_timestamp_seconds after the full list)
  one change     an EndpointSlice write (one endpoint replaced) -> the sync that programmed it
                 (median of 5), and the program's own kubeproxy_network_programming_duration_seconds
  CPU s/sync     user+system CPU of the process over the initial sync
  peak RSS       VmHWM of the process at the end

Every figure is printed with its pyproxy / kube-proxy ratio. Both run with minSyncPeriod 1s (the
default; kube-proxy turns 0 into it) and the changes are 1.2 s apart, so the rate limiter never
holds one back.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import threading
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pyproxy import netns  # noqa: E402
from pyproxy.lab import Lab  # noqa: E402
from pyproxy.lab.proxies import deploy_pyproxy, start_kube_proxy, start_pyproxy  # noqa: E402
from pyproxy.lab.spec import parse_spec  # noqa: E402

SPEC = {"name": "bvs", "controlPlane": "kubernetes", "nodes": [{"name": "n1", "podCIDR": "10.244.1.0/24"}],
        "serviceCIDR": "10.96.0.0/12", "pods": []}
SYNC = {"masqueradeBit": 14, "minSyncPeriod": "1s", "syncPeriod": "1h"}


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def endpoint_ip(i: int, j: int) -> str:
    k = i * 10 + j
    return f"10.{128 + k // 65000}.{k // 250 % 260 % 256}.{k % 250 + 1}"


def objects(n: int) -> list[dict]:
    out = []
    for i in range(n):
        name = f"svc-{i}"
        spec = {"clusterIP": f"10.{96 + i // 65000}.{i // 250 % 256}.{i % 250 + 2}",
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        if i % 10 == 0:
            spec.update(type="NodePort")
        out.append({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": name},
                    "spec": spec})
        out.append(slice_object(i, [endpoint_ip(i, j) for j in range(10)]))
    return out


def slice_object(i: int, ips: list[str]) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"namespace": "default", "name": f"svc-{i}-a",
                         "labels": {"kubernetes.io/service-name": f"svc-{i}"},
                         "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": now_rfc3339()}},
            "endpoints": [{"addresses": [ip], "nodeName": "n1" if k % 2 else "n2", "conditions": {"ready": True}}
                          for k, ip in enumerate(ips)],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def create_all(lab: Lab, objs: list[dict], threads: int = 4) -> float:
    start = time.monotonic()
    chunks = [objs[i::threads] for i in range(threads)]
    apis = [type(lab.cp.api)(lab.cp.api.host, lab.cp.api.port, *lab.cp.api_credentials, lab.cp_ns)
            for _ in range(threads)]

    def work(api, chunk):
        for obj in chunk:
            api.apply(obj)
    workers = [threading.Thread(target=work, args=(api, chunk)) for api, chunk in zip(apis, chunks)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.monotonic() - start


def metrics(ns: str) -> dict[str, float]:
    with netns.entered(ns):
        conn = http.client.HTTPConnection("127.0.0.1", 10249, timeout=5)
        conn.connect()
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out = {}
    for line in text.splitlines():
        if line.startswith("kubeproxy_") and " " in line:
            key, value = line.rsplit(" ", 1)
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def metric(values: dict[str, float], name: str) -> float:
    """A metric's IPv4 value: kube-proxy labels its sync metrics by ip_family (its IPv6 proxier
    syncs too, on its own), pyproxy's unlabelled ones are IPv4's here."""
    labelled = [v for k, v in values.items() if k.startswith(name + "{") and 'ip_family="IPv4"' in k]
    return labelled[0] if labelled else sum(v for k, v in values.items() if k == name or k.startswith(name + "{"))


def last_sync(ns: str) -> float:
    try:
        return metric(metrics(ns), "kubeproxy_sync_proxy_rules_last_timestamp_seconds")
    except OSError:
        return 0.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def run_one(lab: Lab, who: str, mode: str, n: int, kube_config: tuple[str, str],
            initial_timeout: float = 1800) -> dict[str, float]:
    ns = lab.add_shadow(f"{who[:2]}-{mode}-{n // 1000}k")
    variant = mode if mode in ("legacy", "nft") else "legacy"
    proxy_mode = "nftables" if mode == "nftables" else "iptables"
    start_wall = time.time()
    if who == "kube-proxy":
        proc = start_kube_proxy(lab, "n1", ns, mode=proxy_mode, variant=variant, iptables=SYNC, nftables=SYNC,
                                conntrack={"maxPerCore": 0})
    else:
        proc = start_pyproxy(lab, "n1", kube_config[0], kube_config[1], *(
            ["--iptables-variant", variant, "--backend", proxy_mode]), netns_name=ns)
    # the initial sync: the first sync that ends after the process listed everything
    deadline = time.monotonic() + initial_timeout
    while True:
        stamp = last_sync(ns)
        if stamp and synced_all(ns, n, proxy_mode, variant):
            break
        if time.monotonic() > deadline:  # reported as "more than", the process is stopped
            cpu, rss = cpu_seconds(proc.pid), peak_rss_mb(proc.pid)
            lab.processes.stop(proc.name)
            nan = float("nan")
            return {"initial sync s": float("inf"), "one change ms": nan, "programming ms": nan,
                    "CPU s initial": cpu, "peak RSS MB": rss}
        time.sleep(0.05)
    initial = time.time() - start_wall
    cpu = cpu_seconds(proc.pid)
    changes, programming = [], []
    for k in range(5):
        time.sleep(1.2)  # a full minSyncPeriod since the last sync: the change is not rate-limited
        before = metrics(ns)
        i = 1 + k * 7
        t0 = time.time()
        lab.cp.api.apply(slice_object(i, [endpoint_ip(i, j) for j in range(9)] + [f"10.200.{k}.{i % 250 + 1}"]))
        while last_sync(ns) < t0:
            time.sleep(0.002)
        changes.append(time.time() - t0)
        after = metrics(ns)
        count = metric(after, "kubeproxy_network_programming_duration_seconds_count") - \
            metric(before, "kubeproxy_network_programming_duration_seconds_count")
        total = metric(after, "kubeproxy_network_programming_duration_seconds_sum") - \
            metric(before, "kubeproxy_network_programming_duration_seconds_sum")
        if count:
            programming.append(total / count)
    rss = peak_rss_mb(proc.pid)
    lab.processes.stop(proc.name)
    lab.exec_node(ns, ["true"])
    return {"initial sync s": initial, "one change ms": statistics.median(changes) * 1000,
            "programming ms": statistics.median(programming) * 1000 if programming else float("nan"),
            "CPU s initial": cpu, "peak RSS MB": rss}


def synced_all(ns: str, n: int, mode: str, variant: str) -> bool:
    """Every service is in the kernel (counted in the rules), not only a first sync done."""
    if mode == "nftables":
        out = os.popen(f"ip netns exec {ns} nft list map ip kube-proxy service-ips 2>/dev/null | grep -c ' : goto '").read()
        # kube-proxy and pyproxy both list one "ADDR . tcp . 80 : goto ..." element per service
        return int(out.strip() or 0) >= n
    save = f"iptables-{variant}-save"
    out = os.popen(f"ip netns exec {ns} {save} -t nat 2>/dev/null | grep -c '^-A KUBE-SERVICES .*cluster IP'").read()
    return int(out.strip() or 0) >= n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--modes", default="legacy,nft,nftables")
    parser.add_argument("--initial-timeout", type=float, default=600,
                        help="give up on an initial sync after this many seconds (printed as inf)")
    args = parser.parse_args()
    rows = []
    for n in map(int, args.sizes.split(",")):
        lab = Lab(parse_spec(SPEC)).up()
        try:
            kube, config = deploy_pyproxy(lab, {"iptables": SYNC, "nftables": SYNC, "conntrack": {"maxPerCore": 0}})
            took = create_all(lab, objects(n))
            print(f"{n} services x 10 endpoints written through the API in {took:.1f} s", flush=True)
            for mode in args.modes.split(","):
                figures = {}
                for who in ("kube-proxy", "pyproxy"):
                    figures[who] = run_one(lab, who, mode, n, (kube, config), args.initial_timeout)
                    print(f"  {mode:<8} {who:<10} " + ", ".join(f"{k} {v:.2f}" for k, v in figures[who].items()),
                          flush=True)
                rows.append((n, mode, figures))
        finally:
            lab.down()
    print("\nservices  mode      figure            kube-proxy     pyproxy   pyproxy/kube-proxy")
    for n, mode, figures in rows:
        for key in figures["pyproxy"]:
            a, b = figures["kube-proxy"][key], figures["pyproxy"][key]
            print(f"{n:>8}  {mode:<8}  {key:<16} {a:>10.2f}  {b:>10.2f}  {b / a if a else float('nan'):>8.2f}x")


if __name__ == "__main__":
    main()

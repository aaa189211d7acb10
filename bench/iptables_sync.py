"""iptables sync benchmark: render, apply and a bare iptables-restore of the same text, same run.

    .venv/bin/python bench/iptables_sync.py [--sizes 1000,10000] [--variants legacy,nft] [--plot FILE]

For each size: N services of 10 endpoints each, a NodePort on every tenth. Each (variant, size)
runs in a child process (so its peak RSS is the daemon's, cluster model included) inside network
namespaces made for it:
  * render: cluster state -> NodeView (the rules themselves are rendered while iptables-restore
    reads them, as the daemon does, so their time is inside apply);
  * apply: the full sync pyproxy does (iptables-save, rules rendered and streamed into restore
    with jumps and canary);
  * bare: the tool alone, in a fresh namespace: legacy, `iptables-legacy-restore --noflush` of the
    very text apply wrote; nft, whose full sync is several `--noflush` transactions of only our
    chains (the node-safety issue), one plain restore of the same rules as whole tables;
  * partial: one endpoint of one service replaced, from the in-memory state change to the kernel
    (view, render and restore), median of 5.
Prints a table with (render + apply) / bare, and plots sync time against cluster size.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from benchutil import ns_add, ns_del, peak_rss_mb  # noqa: E402
from pyproxy import netns  # noqa: E402
from pyproxy.config import ProxyConfig  # noqa: E402
from pyproxy.iptables.apply import IptablesBackend  # noqa: E402
from pyproxy.iptables.render import Renderer  # noqa: E402
from pyproxy.model.cluster import Cluster  # noqa: E402
from pyproxy.model.types import Endpoint, EndpointPort, EndpointSlice, Node, Service, ServicePort  # noqa: E402
from pyproxy.view import ViewBuilder  # noqa: E402

NODE = "node-a"
ENDPOINTS = 10


def make_cluster(n: int) -> Cluster:
    cluster = Cluster()
    cluster.add(Node(NODE, (ipaddress.ip_address("172.18.0.11"),), (ipaddress.ip_network("10.200.0.0/24"),)))
    svc_base = int(ipaddress.ip_address("10.96.0.0"))
    ep_base = int(ipaddress.ip_address("10.128.0.0"))
    for i in range(n):
        node_port = 30000 + i // 10 if i % 10 == 0 else 0
        svc = Service("bench", f"svc-{i}", "NodePort" if node_port else "ClusterIP",
                      (ipaddress.ip_address(svc_base + i + 1),), ports=(ServicePort("http", "TCP", 80, node_port),))
        cluster.add(svc)
        eps = tuple(Endpoint((ipaddress.ip_address(ep_base + i * ENDPOINTS + j),), node_name=f"node-{j % 3}")
                    for j in range(ENDPOINTS))
        cluster.add(EndpointSlice("bench", f"svc-{i}-abc", f"svc-{i}", "IPv4", eps, (EndpointPort("http", "TCP", 8080),)))
    return cluster


def whole_tables(recorded, out) -> None:
    """The transactions' lines into `out` as one section per table (at a cold start they only
    add): two passes over the file, so the bench's own memory stays out of the figure."""
    tables: dict[str, list[str]] = {}  # table -> its chain declarations
    for line in recorded:
        if line.startswith("*"):
            current = tables.setdefault(line.strip(), [])
        elif line.startswith(":"):
            current.append(line)
    for table, declarations in tables.items():
        out.write(table + "\n")
        out.writelines(declarations)
        recorded.seek(0)
        inside = False
        for line in recorded:
            if line.startswith("*"):
                inside = line.strip() == table
            elif inside and line != "COMMIT\n" and not line.startswith(":"):
                out.write(line)
        out.write("COMMIT\n")
    out.flush()


def one(variant: str, n: int) -> dict:
    config = ProxyConfig(cluster_cidrs=(ipaddress.ip_network("10.128.0.0/9"),), iptables_variant=variant)
    cluster = make_cluster(n)
    gc.freeze()  # as the daemon's sync does: the long-lived model is not rescanned (see proxier)
    gc.disable()
    views = ViewBuilder(NODE)
    renderer = Renderer(config)
    start = time.perf_counter()
    view = views.build(cluster)
    render_s = time.perf_counter() - start  # the view; rules render while restore reads them (apply)
    out: dict = {"variant": variant, "services": n, "render_s": render_s}
    node_ns, bare_ns = ns_add(), ns_add()
    try:
        with netns.entered(node_ns):
            backend = IptablesBackend(4, variant)
            real_restore = backend.restore
            recorded = tempfile.NamedTemporaryFile("w+", suffix=".rules")
            flags: list[bool] = []

            def recording_restore(lines, noflush=True):  # keeps a copy of exactly what apply sent
                flags.append(noflush)

                def tee():
                    for line in lines:
                        recorded.write(line + "\n")
                        yield line
                return real_restore(tee(), noflush)

            backend.restore = recording_restore  # type: ignore[method-assign]
            out["apply_s"] = backend.sync(renderer.lazy(view, 4), full=True).seconds
            backend.restore = real_restore  # type: ignore[method-assign]
            out["rules_nat"] = backend.last_ruleset.rule_count("nat")
        recorded.flush()
        out["transactions"] = len(flags)
        recorded.seek(0)
        # The floor: the tool alone. Legacy: the very text, as one --noflush restore. nft: apply
        # writes several --noflush transactions (one big one takes minutes there); the floor is
        # the same rules as one plain restore of whole tables, the fastest way into the kernel.
        bare = recorded
        if variant == "nft":
            bare = tempfile.NamedTemporaryFile("w+", suffix=".rules")
            whole_tables(recorded, bare)
        with netns.entered(bare_ns), open(bare.name, "rb") as data:
            cmd = [f"iptables-{variant}-restore", *(["--noflush"] if variant == "legacy" else [])]
            start = time.perf_counter()
            proc = subprocess.run(cmd, stdin=data, capture_output=True)
            out["bare_s"] = time.perf_counter() - start
            assert proc.returncode == 0, proc.stderr
        recorded.close()
        bare.close()
        partial, partial_py = [], []
        with netns.entered(node_ns):
            for k in range(5):
                key = f"bench/svc-{(k * 7919) % n}-abc"
                old = cluster.slices[key]
                moved = (Endpoint((ipaddress.ip_address(f"10.127.{k}.{1 + k}"),), node_name="node-x"),) + old.endpoints[1:]
                start = time.perf_counter()
                cluster.slices[key] = EndpointSlice(old.namespace, old.name, old.service_name, old.address_type, moved,
                                                    old.ports)
                view = views.build(cluster)
                rendered = renderer.render(view, 4)
                partial_py.append(time.perf_counter() - start)
                result = backend.sync(rendered)  # a partial sync renders everything (memoised) first
                partial.append(time.perf_counter() - start)
                assert not result.full and result.chains_written >= 1, result
        out["partial_s"] = statistics.median(partial)
        out["partial_view_render_s"] = statistics.median(partial_py)
    finally:
        ns_del(node_ns)
        ns_del(bare_ns)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--variants", default="legacy,nft")
    parser.add_argument("--plot", default="")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]))))
        return
    rows = []
    for variant in args.variants.split(","):
        for n in map(int, args.sizes.split(",")):
            proc = subprocess.run([sys.executable, __file__, "--one", variant, str(n)], capture_output=True, text=True)
            if proc.returncode:
                print(f"{variant} {n}: failed: {proc.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  done {variant:6} {n:6}: render {r['render_s']:.2f}s apply {r['apply_s']:.2f}s "
                  f"({r['transactions']} restores) "
                  f"bare {r['bare_s']:.2f}s partial {r['partial_s'] * 1000:.0f}ms "
                  f"(view+render {r['partial_view_render_s'] * 1000:.0f}ms)", file=sys.stderr, flush=True)
    print(f"{'variant':8}{'services':>9}{'nat rules':>10}{'render s':>10}{'apply s':>9}{'bare s':>8}"
          f"{'(r+a)/bare':>12}{'partial ms':>12}{'RSS MB':>8}")
    for r in rows:
        ratio = (r["render_s"] + r["apply_s"]) / r["bare_s"]
        print(f"{r['variant']:8}{r['services']:>9}{r['rules_nat']:>10}{r['render_s']:>10.2f}{r['apply_s']:>9.2f}"
              f"{r['bare_s']:>8.2f}{ratio:>12.2f}{r['partial_s'] * 1000:>12.0f}{r['peak_rss_mb']:>8.0f}")
    print("targets at 10,000 services: (render+apply)/bare <= 1.25, partial <= 100 ms, RSS <= 250 MB")
    if args.plot:
        plot(rows, args.plot)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for variant, style in (("legacy", "o-"), ("nft", "s-")):
        mine = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["services"])
        if not mine:
            continue
        xs = [r["services"] for r in mine]
        ax.plot(xs, [r["render_s"] + r["apply_s"] for r in mine], style, label=f"{variant}: full sync (render + apply)")
        ax.plot(xs, [r["bare_s"] for r in mine], style, alpha=0.4, label=f"{variant}: bare iptables-restore")
        ax.plot(xs, [r["partial_s"] for r in mine], style.replace("-", "--"), label=f"{variant}: one-endpoint change")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("services (10 endpoints each)")
    ax.set_ylabel("seconds")
    ax.set_title("pyproxy iptables sync time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


if __name__ == "__main__":
    main()

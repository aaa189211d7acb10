"""Where a node's memory goes, per service: the cluster model, the node view, the rendered rules
and the text written to the kernel, measured as resident-set growth after each stage.

    .venv/bin/python bench/memory_split.py [--services 20000] [--mode nftables|iptables]

N services of 10 endpoints, a NodePort on every tenth (the shape of the other benchmarks). The
scale issue's budget is 1 GB for the daemon at 100,000 services: 10 KB per service, the baseline
each figure is printed against. Pure Python, no kernel: the writers' own state (the nftables
element references, the iptables chains last written) comes on top.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from iptables_sync import NODE, make_cluster  # noqa: E402
from pyproxy.config import ProxyConfig  # noqa: E402
from pyproxy.view import ViewBuilder  # noqa: E402

BUDGET_KB = 10.0  # 1 GB / 100,000 services


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=20000)
    parser.add_argument("--mode", choices=("nftables", "iptables"), default="nftables")
    args = parser.parse_args()
    n = args.services
    stages: list[tuple[str, float]] = []

    def stage(name: str) -> None:
        gc.collect()
        stages.append((name, rss_mb()))

    stage("start")
    cluster = make_cluster(n)
    stage("cluster model")
    view = ViewBuilder(NODE).build(cluster)
    view.family(4)  # what every full render walks
    stage("node view")
    config = ProxyConfig(mode=args.mode)
    if args.mode == "nftables":
        from pyproxy.nftables.render import NftRenderer

        ruleset = NftRenderer(config).render(view, 4)
        stage("rendered rules")
        text = ruleset.script()
    else:
        from pyproxy.iptables.render import Renderer

        ruleset = Renderer(config).render(view, 4)
        stage("rendered rules")
        text = "\n".join(ruleset.dump_lines())
    stage("text for the kernel")
    print(f"{args.mode}, {n} services x 10 endpoints: resident growth per stage")
    print(f"{'stage':22}{'KB/service':>12}{'x budget':>10}")
    total = 0.0
    for (_, before), (name, after) in zip(stages, stages[1:]):
        kb = (after - before) * 1024 / n
        total += kb
        print(f"{name:22}{kb:>12.1f}{kb / BUDGET_KB:>10.2f}")
    print(f"{'total':22}{total:>12.1f}{total / BUDGET_KB:>10.2f}")
    print(f"budget: {BUDGET_KB:.0f} KB per service (the scale issue's 1 GB at 100,000); text {len(text) / n:.0f} "
          "characters per service")


if __name__ == "__main__":
    main()

"""Upstream's conformance tests against a lab of real nodes: pyproxy deployed from daemonset.yaml,
and upstream's kube-proxy deployed the same way as the baseline.

    python -m pyproxy.lab.conformance [--proxy pyproxy|kube-proxy|both] [--focus REGEX] [--skip REGEX]
                                      [--name LAB] [--keep | --up | --down]

For each proxy: a two-node lab with the real control plane (realnode.start_lab_nodes: kubelet and
containerd per node; start_cluster_services: scheduler, root CA publisher, DaemonSet controller,
CoreDNS), the proxy's image built from its Dockerfile (imagebuild) and imported on both nodes,
`kubectl apply -f` of its DaemonSet manifest, then `e2e.test` inside the control plane's
namespace; its JUnit report gives each test's result. With `both` the two runs go one after the
other on fresh labs (same images, same spec) and a table puts their results side by side.
Needs e2e.test built (`pyproxy/lab/build-upstream.sh e2e.test`, about 10 minutes cold).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from .. import netns
from . import imagebuild, proxies, realnode, upstream
from .controlplane import ControlPlaneError
from .images import ImageError
from .lab import Lab, LabError

SERVICES = r"\[sig-network\] Services.*\[Conformance\]"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFESTS = {"pyproxy": os.path.join(REPO, "daemonset.yaml"),
             "kube-proxy": os.path.join(imagebuild.KUBE_PROXY_CONTEXT, "daemonset.yaml")}


@dataclass
class Run:
    proxy: str
    results: dict[str, str] = field(default_factory=dict)  # test name -> passed / failed / skipped
    exit_code: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results.values() if r == outcome)


def proxy_image(proxy: str) -> str:
    """The proxy's image archive, built from its Dockerfile as a user builds it."""
    if proxy == "kube-proxy":
        return imagebuild.build_kube_proxy_image()[1]
    ds = next(o for o in proxies.daemonset_objects() if o["kind"] == "DaemonSet")
    image = ds["spec"]["template"]["spec"]["containers"][0]["image"]
    return imagebuild.build_pyproxy_image(REPO, imagebuild.normalized(image))


def junit_results(path: str) -> dict[str, str]:
    """Each spec's outcome from e2e.test's junit_01.xml (the suite's setup nodes left out)."""
    results = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name", "")
        if not name.startswith("[It]"):
            continue
        status = case.get("status") or ("failed" if case.find("failure") is not None else
                                        "skipped" if case.find("skipped") is not None else "passed")
        results[name.removeprefix("[It] ").strip()] = status
    return results


def run_one(proxy: str, archive: str, args) -> Run:
    run = Run(proxy)
    started = time.monotonic()
    with realnode.two_node_cluster(args.name, services=True, keep=args.keep, replace=True) as (lab, nodes):
        run.timings["cluster up"] = time.monotonic() - started
        run.timings["apply to Ready"] = realnode.apply_daemonset(lab, nodes, archive, MANIFESTS[proxy])
        print(f"{proxy}: cluster up in {run.timings['cluster up']:.1f}s, kubectl apply to Ready on both nodes in "
              f"{run.timings['apply to Ready']:.1f}s (lab {args.name}, logs in {lab.dir})", flush=True)
        if args.up:
            print(f"left up: pyproxy lab kubectl --name {args.name} -- get pods -A; take it down with "
                  f"python -m pyproxy.lab.conformance --down --name {args.name}")
            return run
        report = os.path.join(lab.dir, "e2e")
        os.makedirs(report, exist_ok=True)
        log = os.path.join(report, "e2e.log")
        began = time.monotonic()
        with open(log, "w") as out:
            proc = subprocess.run(["nsenter", f"--net={netns.netns_path(lab.cp_ns)}",
                                   *realnode.e2e_argv(lab, args.focus, args.skip, report)],
                                  stdout=out, stderr=subprocess.STDOUT)
        run.timings["e2e"] = time.monotonic() - began
        run.exit_code = proc.returncode
        junit = os.path.join(report, "junit_01.xml")
        if os.path.exists(junit):
            run.results = junit_results(junit)
        print(f"{proxy}: e2e.test exit {proc.returncode} after {run.timings['e2e']:.0f}s; "
              f"{run.count('passed')} passed, {run.count('failed')} failed; full log {log}", flush=True)
        return run


def side_by_side(runs: list[Run]) -> str:
    names = sorted({n for r in runs for n, outcome in r.results.items() if outcome != "skipped"})
    lines = ["  ".join(f"{r.proxy:>10}" for r in runs) + "  test"]
    for name in names:
        lines.append("  ".join(f"{r.results.get(name, '-'):>10}" for r in runs) + f"  {name}")
    totals = (f"{r.count('passed')}/{r.count('passed') + r.count('failed')}" for r in runs)
    lines.append("  ".join(f"{total:>10}" for total in totals) + "  passed")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyproxy.lab.conformance")
    parser.add_argument("--proxy", choices=("pyproxy", "kube-proxy", "both"), default="both")
    parser.add_argument("--focus", default=SERVICES)
    parser.add_argument("--skip", default="")
    parser.add_argument("--name", default="conf")
    parser.add_argument("--keep", action="store_true", help="leave the lab up (then: --down); one proxy only")
    parser.add_argument("--up", action="store_true", help="bring the cluster up with the proxy, run no tests, "
                                                          "leave it up (then: --down); one proxy only")
    parser.add_argument("--down", action="store_true", help="take down a lab left by --keep or --up")
    args = parser.parse_args(argv)
    args.keep = args.keep or args.up
    if args.down:
        lab = Lab.load(args.name)
        realnode.stop_lab_nodes(lab)
        print("removed", " ".join(lab.down()))
        return 0
    chosen = ["pyproxy", "kube-proxy"] if args.proxy == "both" else [args.proxy]
    if args.keep and len(chosen) > 1:
        parser.error("--keep and --up need --proxy pyproxy or --proxy kube-proxy")
    try:
        upstream.ensure(*upstream.CONTROL_PLANE, *realnode.NODE_COMPONENTS, "agnhost", "kube-scheduler",
                        "coredns", *(() if args.up else ("e2e.test",)))
        archives = {proxy: proxy_image(proxy) for proxy in chosen}
    except (upstream.UpstreamError, imagebuild.ImageBuildError) as err:
        print(f"conformance: {err}", file=sys.stderr)
        return 1
    try:
        runs = [run_one(proxy, archives[proxy], args) for proxy in chosen]
    except (ControlPlaneError, ImageError, LabError, realnode.NodeError) as err:
        print(f"conformance: the cluster did not come up: {err}", file=sys.stderr)
        return 1
    if not args.up:
        print(side_by_side(runs))
    return max(r.exit_code for r in runs)


if __name__ == "__main__":
    sys.exit(main())

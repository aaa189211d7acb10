"""Upstream's conformance tests against a lab of real nodes, pyproxy as the service proxy.

    python -m pyproxy.lab.conformance [--focus REGEX] [--skip REGEX] [--name LAB] [--keep | --down]

Brings up a two-node lab with the real control plane (realnode.start_lab_nodes: kubelet and
containerd per node; start_cluster_services: scheduler, root CA publisher, CoreDNS), runs pyproxy on
every node as the lab does (daemonset.yaml's ServiceAccount, RBAC and ConfigMap), runs `e2e.test`
inside the control plane's namespace, prints its summary, and takes everything down (unless --keep).
Needs e2e.test built (`pyproxy/lab/build-upstream.sh e2e.test`, about 10 minutes cold).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

from .. import netns
from . import proxies, realnode, upstream
from .lab import Lab
from .spec import parse_spec

SERVICES = r"\[sig-network\] Services.*\[Conformance\]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyproxy.lab.conformance")
    parser.add_argument("--focus", default=SERVICES)
    parser.add_argument("--skip", default="")
    parser.add_argument("--name", default="conf")
    parser.add_argument("--keep", action="store_true", help="leave the lab up (then: --down)")
    parser.add_argument("--down", action="store_true", help="take down a lab left by --keep")
    args = parser.parse_args(argv)
    if args.down:
        lab = Lab.load(args.name)
        realnode.stop_lab_nodes(lab)
        print("removed", " ".join(lab.down()))
        return 0
    upstream.ensure(*upstream.CONTROL_PLANE, *realnode.NODE_COMPONENTS, "agnhost", "kube-scheduler", "coredns",
                    "e2e.test")
    raw = {"name": args.name, "controlPlane": "kubernetes",
           "nodes": [{"name": "node1", "podCIDR": "10.244.1.0/24"}, {"name": "node2", "podCIDR": "10.244.2.0/24"}]}
    lab = Lab(parse_spec(raw))
    started = time.monotonic()
    lab.up(raw, replace=True)
    try:
        realnode.start_lab_nodes(lab)
        realnode.start_cluster_services(lab)
        kube, config = proxies.deploy_pyproxy(lab)
        for n in lab.spec.nodes:
            proxies.start_pyproxy(lab, n.name, kube, config)
        print(f"cluster up in {time.monotonic() - started:.1f}s (lab {args.name}, logs in {lab.dir})", flush=True)
        report = os.path.join(lab.dir, "e2e")
        os.makedirs(report, exist_ok=True)
        log = os.path.join(report, "e2e.log")
        began = time.monotonic()
        with open(log, "w") as out:
            proc = subprocess.run(["nsenter", f"--net={netns.netns_path(lab.cp_ns)}",
                                   *realnode.e2e_argv(lab, args.focus, args.skip, report)],
                                  stdout=out, stderr=subprocess.STDOUT)
        with open(log) as f:
            text = f.read()
        for line in text.splitlines():
            if re.match(r"^\s*\[(FAIL|PASSED)\]|^Ran \d+ of|^(SUCCESS|FAIL)!", line):
                print(line)
        print(f"e2e.test exit {proc.returncode} after {time.monotonic() - began:.0f}s; full log {log}")
        return proc.returncode
    finally:
        if not args.keep:
            realnode.stop_lab_nodes(lab)
            lab.down()


if __name__ == "__main__":
    sys.exit(main())

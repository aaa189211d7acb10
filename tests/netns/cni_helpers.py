"""Run a CNI plugin exactly as a runtime does (exec, CNI_* env, config on stdin), with the
"host" side of the plugin inside a namespace the test created."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from pyproxy import netns
from pyproxy.lab.lab import cni_bin_dir

OURS = os.path.join(cni_bin_dir(), "pyproxy-bridge")
REFERENCE_DIR = "/usr/lib/cni"
CNI_PATH = f"{cni_bin_dir()}:{REFERENCE_DIR}"


def invoke(plugin: str, command: str, conf: dict[str, Any] | bytes, host_ns: str, *, container_id: str = "ctr1",
           pod_ns: str | None = None, ifname: str = "eth0", env: dict[str, str] | None = None) -> tuple[int, Any]:
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    full_env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
                "CNI_NETNS": netns.netns_path(pod_ns) if pod_ns else "", "CNI_IFNAME": ifname, "CNI_PATH": CNI_PATH}
    full_env.update(env or {})
    full_env = {k: v for k, v in full_env.items() if v is not None}
    with netns.entered(host_ns):
        proc = subprocess.run([plugin], input=stdin, capture_output=True, env=full_env)
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, out


def bridge_conf(data_dir: str, version: str = "1.0.0", subnet: str = "10.22.0.0/24", **extra: Any) -> dict[str, Any]:
    conf = {"cniVersion": version, "name": "testnet", "type": "bridge", "bridge": "cni0", "isGateway": True,
            "isDefaultGateway": True, "hairpinMode": True,
            "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": subnet}]],
                     "routes": [{"dst": "10.22.0.0/16"}]}}
    conf.update(extra)
    return conf


def ip_json(ns: str, *args: str) -> Any:
    out = subprocess.run(["ip", "-j", "-n", ns, *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out) if out.strip() else []


def links(ns: str) -> list[dict[str, Any]]:
    return ip_json(ns, "-d", "link", "show")


def addresses(ns: str, dev: str) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for i in ip_json(ns, "addr", "show", "dev", dev)
            for a in i["addr_info"] if a["scope"] != "link"]


def routes(ns: str) -> list[tuple[str, str | None]]:
    return sorted((r["dst"], r.get("gateway")) for r in ip_json(ns, "route", "show"))


def allocated(data_dir: str, network: str = "testnet") -> list[str]:
    path = os.path.join(data_dir, network)
    if not os.path.isdir(path):
        return []
    return sorted(f for f in os.listdir(path) if not f.startswith(("lock", "last_reserved_ip")))

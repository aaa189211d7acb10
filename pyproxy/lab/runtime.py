"""Attach pods the way a container runtime does: read the network list from a CNI config
directory and exec each plugin with CNI_* variables and its configuration on stdin.

Like libcni: plugins of a conflist run in order on ADD (each gets the previous result as
prevResult) and in reverse on DEL, and the ADD result is cached for DEL and CHECK.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
from dataclasses import dataclass
from typing import Any

from .. import netns


class CniFailure(RuntimeError):
    def __init__(self, command: str, plugin: str, error: dict[str, Any], stderr: str) -> None:
        super().__init__(f"CNI {command} via {plugin} failed: code {error.get('code')}: {error.get('msg')}"
                         + (f" ({error['details']})" if error.get("details") else ""))
        self.error = error
        self.stderr = stderr


@dataclass
class CniRuntime:
    conf_dir: str
    bin_dirs: tuple[str, ...]
    cache_dir: str
    host_netns: str | None = None  # where plugins run (the node); None: the current namespace

    def network_list(self) -> dict[str, Any]:
        files = sorted(glob.glob(os.path.join(self.conf_dir, "*.conflist")) + glob.glob(os.path.join(self.conf_dir, "*.conf")))
        if not files:
            raise FileNotFoundError(f"no CNI configuration in {self.conf_dir}")
        with open(files[0]) as f:
            conf = json.load(f)
        if "plugins" not in conf:  # a single-plugin .conf
            conf = {"cniVersion": conf.get("cniVersion"), "name": conf.get("name"), "plugins": [conf]}
        return conf

    def _plugin_conf(self, network: dict[str, Any], plugin: dict[str, Any], prev: dict | None,
                     extra: dict[str, Any] | None = None) -> bytes:
        conf = {**plugin, "cniVersion": network["cniVersion"], "name": network["name"], **(extra or {})}
        if prev is not None:
            conf["prevResult"] = prev
        return json.dumps(conf).encode()

    def exec_plugin(self, kind: str, command: str, stdin: bytes, container_id: str = "", netns_path: str = "",
                    ifname: str = "", args: str = "") -> dict[str, Any] | None:
        binary = next((os.path.join(d, kind) for d in self.bin_dirs if os.access(os.path.join(d, kind), os.X_OK)), None)
        if binary is None:
            raise FileNotFoundError(f"CNI plugin {kind!r} not found in {self.bin_dirs}")
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
               "CNI_CONTAINERID": container_id, "CNI_NETNS": netns_path, "CNI_IFNAME": ifname,
               "CNI_ARGS": args, "CNI_PATH": ":".join(self.bin_dirs)}
        if self.host_netns:
            with netns.entered(self.host_netns):
                proc = subprocess.run([binary], input=stdin, capture_output=True, env=env)
        else:
            proc = subprocess.run([binary], input=stdin, capture_output=True, env=env)
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
        if proc.returncode:
            raise CniFailure(command, kind, out or {}, proc.stderr.decode(errors="replace"))
        return out

    def _cache(self, network: str, container_id: str, ifname: str) -> str:
        return os.path.join(self.cache_dir, f"{network}-{container_id}-{ifname}.json")

    def add(self, container_id: str, netns_path: str, ifname: str = "eth0", args: str = "") -> dict[str, Any]:
        network = self.network_list()
        prev: dict | None = None
        for plugin in network["plugins"]:
            prev = self.exec_plugin(plugin["type"], "ADD", self._plugin_conf(network, plugin, prev),
                                    container_id, netns_path, ifname, args)
        assert prev is not None
        os.makedirs(self.cache_dir, exist_ok=True)
        with open(self._cache(network["name"], container_id, ifname), "w") as f:
            json.dump(prev, f)
        return prev

    def cached_result(self, container_id: str, ifname: str = "eth0") -> dict[str, Any] | None:
        network = self.network_list()
        try:
            with open(self._cache(network["name"], container_id, ifname)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def check(self, container_id: str, netns_path: str, ifname: str = "eth0") -> None:
        network = self.network_list()
        prev = self.cached_result(container_id, ifname)
        for plugin in network["plugins"]:
            self.exec_plugin(plugin["type"], "CHECK", self._plugin_conf(network, plugin, prev),
                             container_id, netns_path, ifname)

    def delete(self, container_id: str, netns_path: str, ifname: str = "eth0") -> None:
        network = self.network_list()
        prev = self.cached_result(container_id, ifname)
        for plugin in reversed(network["plugins"]):
            self.exec_plugin(plugin["type"], "DEL", self._plugin_conf(network, plugin, prev),
                             container_id, netns_path, ifname)
        try:
            os.unlink(self._cache(network["name"], container_id, ifname))
        except FileNotFoundError:
            pass

    def gc(self, valid: list[tuple[str, str]]) -> None:
        network = self.network_list()
        attachments = [{"containerID": cid, "ifname": ifname} for cid, ifname in valid]
        for plugin in network["plugins"]:
            self.exec_plugin(plugin["type"], "GC", self._plugin_conf(
                network, plugin, None, {"cni.dev/valid-attachments": attachments}))

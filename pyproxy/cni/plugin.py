"""`pyproxy-bridge`: the CNI plugin entry point (spec 1.1.0, results down to 0.3.0).

The runtime executes us with CNI_* variables and the network configuration on stdin; we answer
with a result or an error object on stdout and log on stderr. This module only dispatches; the
work is in config (validation), ipam (addresses), bridge (links) and masq (NAT).

Startup cost matters here (one exec per pod start): import nothing beyond the standard library
and this package's cni modules.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from typing import Any, Mapping

from . import bridge, ipam
from .config import (
    SUPPORTED_VERSIONS,
    BridgeConf,
    Env,
    Route,
    check_version,
    decode,
    parse_bridge_conf,
    parse_env,
)
from .errors import INCOMPATIBLE_VERSION, INTERNAL, INVALID_CONFIG, IO_FAILURE, NOT_AVAILABLE, CniError
from .result import IPConfig, parse, render

Result = dict[str, Any] | None


def _delegate(env: Env, conf: BridgeConf, command: str, stdin: bytes) -> dict[str, Any]:
    """Run the IPAM plugin named by ipam.type from CNI_PATH, as the spec says."""
    kind = conf.ipam.get("type")
    if not isinstance(kind, str) or not kind or "/" in kind or "\0" in kind:
        raise CniError(INVALID_CONFIG, f"ipam.type: invalid plugin name {kind!r}")
    for directory in env.path:
        binary = os.path.join(directory, kind)
        if os.access(binary, os.X_OK):
            break
    else:
        raise CniError(INVALID_CONFIG, f"ipam plugin {kind!r} not found in CNI_PATH {list(env.path)}")
    import subprocess  # only when delegating: keep it off the common ADD path

    proc = subprocess.run([binary], input=stdin, capture_output=True, env={**os.environ, "CNI_COMMAND": command})
    sys.stderr.write(proc.stderr.decode(errors="replace"))
    out = json.loads(proc.stdout or b"{}") if proc.stdout.strip() else {}
    if proc.returncode:
        raise CniError(int(out.get("code", INTERNAL)), out.get("msg", f"ipam plugin {kind} failed"),
                       out.get("details", ""))
    return out


def _ipam_add(env: Env, conf: BridgeConf, stdin: bytes) -> tuple[list[IPConfig], list[Route], Mapping[str, Any]]:
    if conf.host_local is not None:
        taken = ipam.allocate(conf.host_local, env.container_id, env.ifname)
        ips = [IPConfig(ipaddress.ip_interface((ip, r.subnet.prefixlen)), r.gateway, None)
               for r, ip in taken]
        return ips, list(conf.host_local.routes), conf.ipam.get("dns") or {}
    if not conf.ipam:
        raise CniError(INVALID_CONFIG, "ipam: missing; the bridge plugin needs an IPAM configuration")
    _, ips, routes = parse(_delegate(env, conf, "ADD", stdin))
    return ips, routes, {}


def _ipam_del(env: Env, conf: BridgeConf, stdin: bytes) -> set[int]:
    """Release the container's addresses; return the IP versions it had (for NAT teardown)."""
    if conf.host_local is not None:
        released = ipam.release(conf.host_local, env.container_id, env.ifname)
        return {ip.version for ip in released} | {rs[0].subnet.version for rs in conf.host_local.ranges}
    if conf.ipam:
        _delegate(env, conf, "DEL", stdin)
    return set()


def cmd_add(env: Env, conf: BridgeConf, stdin: bytes) -> Result:
    os.close(bridge.open_netns(env.netns))  # fail before allocating anything
    with bridge.netlink_in(env.netns) as cont:
        if cont.link(env.ifname) is not None:
            raise CniError(INTERNAL, f"container veth name provided ({env.ifname}) already exists")
    ips, routes, dns = _ipam_add(env, conf, stdin)
    try:
        routes = bridge.container_routes(routes, ips, conf.is_default_gateway)
        interfaces, ips = bridge.setup(conf, env.netns, env.ifname, ips, routes)
        if conf.ip_masq:
            from . import masq

            for ip in ips:
                masq.setup(conf.name, env.container_id, ip.address)
    except BaseException:
        _ipam_del(env, conf, stdin)
        bridge.teardown(env.netns, env.ifname)
        raise
    return render(conf.cni_version, interfaces, ips, routes, dns or conf.dns)


def cmd_del(env: Env, conf: BridgeConf, stdin: bytes) -> Result:
    versions = _ipam_del(env, conf, stdin)
    versions |= {a.version for a in bridge.teardown(env.netns, env.ifname)}
    if conf.prev_result:
        versions |= {ip.address.version for ip in parse(conf.prev_result)[1]}
    if conf.ip_masq:
        from . import masq

        masq.teardown(conf.name, env.container_id, versions or {4})
    return None


def cmd_check(env: Env, conf: BridgeConf, stdin: bytes) -> Result:
    if conf.cni_version.startswith("0.3") or conf.cni_version.startswith("0.2"):
        raise CniError(INCOMPATIBLE_VERSION, f"CHECK is not supported by cniVersion {conf.cni_version} (0.4.0 and later)")
    if not conf.prev_result:
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult")
    _, ips, routes = parse(conf.prev_result)
    ips = [ip for ip in ips if ip.interface is None or ip.interface == 2]
    if conf.host_local is not None:
        owned = set(ipam.Store(conf.host_local.data_dir).owned_by(env.container_id, env.ifname))
        for ip in ips:
            if ip.address.ip not in owned:
                raise CniError(INTERNAL, f"{ip.address.ip} is not allocated to {env.container_id}/{env.ifname}")
    elif conf.ipam:
        _delegate(env, conf, "CHECK", stdin)
    bridge.check(conf, env.netns, env.ifname, ips, routes)
    return None


def cmd_gc(env: Env, conf: BridgeConf, stdin: bytes) -> Result:
    """GC: free every allocation whose attachment the runtime no longer knows."""
    raw = conf.raw.get("cni.dev/valid-attachments", conf.raw.get("cni.dev/attachments", []))
    if not isinstance(raw, list) or not all(isinstance(a, dict) for a in raw):
        raise CniError(INVALID_CONFIG, "cni.dev/valid-attachments: expected a list of objects")
    valid = {(a.get("containerID", ""), a.get("ifname", "")) for a in raw}
    valid_ids = {cid for cid, _ in valid}
    if conf.host_local is None:
        if conf.ipam:
            _delegate(env, conf, "GC", stdin)
        return None
    store = ipam.Store(conf.host_local.data_dir)
    stale: dict[str, set[int]] = {}
    with store.locked():
        for ip, (owner, ifname) in store.allocations().items():
            known = (owner, ifname) in valid if ifname else owner in valid_ids
            if not known:
                store.release(ip)
                stale.setdefault(owner, set()).add(ip.version)
    if conf.ip_masq:
        from . import masq

        for owner, versions in stale.items():
            masq.teardown(conf.name, owner, versions)
    return None


def cmd_status(env: Env, conf: BridgeConf, stdin: bytes) -> Result:
    if conf.host_local is not None:
        if ipam.exhausted(conf.host_local):
            raise CniError(NOT_AVAILABLE, "no IP addresses available in a range set")
    elif conf.ipam:
        _delegate(env, conf, "STATUS", stdin)
    return None


COMMANDS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}
NEEDS_1_1 = {"GC", "STATUS"}


def run(environ: Mapping[str, str], stdin: bytes) -> tuple[int, Result]:
    """The whole invocation as a function: (exit code, JSON to print)."""
    version = SUPPORTED_VERSIONS[-1]
    try:
        env = parse_env(environ)
        if env.command == "VERSION":
            asked = decode(stdin).get("cniVersion") if stdin.strip() else None
            return 0, {"cniVersion": asked if asked in SUPPORTED_VERSIONS else version,
                       "supportedVersions": list(SUPPORTED_VERSIONS)}
        raw = decode(stdin)
        version = check_version(raw)
        if env.command in NEEDS_1_1 and version != "1.1.0":
            raise CniError(INCOMPATIBLE_VERSION, f"{env.command} needs cniVersion 1.1.0, got {version}")
        conf = parse_bridge_conf(raw)
        return 0, COMMANDS[env.command](env, conf, stdin)
    except CniError as err:
        return 1, err.to_json(version)
    except Exception as err:  # noqa: BLE001 - the runtime must always get an error object
        where = err.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        origin = f" ({where.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{where.tb_lineno})" if where else ""
        sys.stderr.write(f"pyproxy-bridge: internal error{origin}: {type(err).__name__}: {str(err)[:200]}\n")
        code = IO_FAILURE if isinstance(err, OSError) else INTERNAL
        return 1, CniError(code, f"{type(err).__name__}: {str(err)[:200]}").to_json(version)


def main() -> None:
    code, result = run(os.environ, sys.stdin.buffer.read())
    if result is not None:
        sys.stdout.write(json.dumps(result, indent=4) + "\n")
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()

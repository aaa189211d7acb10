"""`ipMasq`: the reference bridge plugin's per-container NAT chain, byte for byte.

nat POSTROUTING gets `-s <ip> -j CNI-<hash>`; the chain accepts traffic to the pod subnet and
masquerades the rest (but multicast). The chain name is "CNI-" + the first 24 hex digits of
sha512(network name + container ID), so rules written by the reference plugin are found and
removed by ours and the other way round.
"""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess  # masq is imported lazily: only ipMasq networks pay for this

from .errors import INTERNAL, CniError


def chain_name(network: str, container_id: str) -> str:
    return "CNI-" + hashlib.sha512((network + container_id).encode()).hexdigest()[:24]


def _comment(network: str, container_id: str) -> str:
    return f'"name: \\"{network}\\" id: \\"{container_id}\\""'


def _tool(version: int, suffix: str = "") -> str:
    return ("iptables" if version == 4 else "ip6tables") + suffix


def setup(network: str, container_id: str, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> None:
    chain = chain_name(network, container_id)
    comment = _comment(network, container_id)
    host = "/32" if address.version == 4 else "/128"
    multicast = "224.0.0.0/4" if address.version == 4 else "ff00::/8"
    script = (
        "*nat\n"
        f":{chain} - [0:0]\n"
        f"-A POSTROUTING -s {address.ip}{host} -m comment --comment {comment} -j {chain}\n"
        f"-A {chain} -d {address.network} -m comment --comment {comment} -j ACCEPT\n"
        f"-A {chain} ! -d {multicast} -m comment --comment {comment} -j MASQUERADE\n"
        "COMMIT\n"
    )
    proc = subprocess.run([_tool(address.version, "-restore"), "--noflush", "--wait"], input=script.encode(),
                          capture_output=True)
    if proc.returncode:
        raise CniError(INTERNAL, "failed to set up IP masquerade", proc.stderr.decode().strip())


def teardown(network: str, container_id: str, versions: set[int]) -> None:
    """Remove the chain and the POSTROUTING jumps to it; absent rules are not an error."""
    chain = chain_name(network, container_id)
    for version in versions:
        listing = subprocess.run([_tool(version), "-w", "-t", "nat", "-S", "POSTROUTING"], capture_output=True, text=True)
        jumps = [line for line in listing.stdout.splitlines() if line.endswith(f"-j {chain}")]
        exists = subprocess.run([_tool(version), "-w", "-t", "nat", "-S", chain], capture_output=True).returncode == 0
        if not jumps and not exists:
            continue
        script = "*nat\n" + "".join("-D" + line[2:] + "\n" for line in jumps)
        if exists:
            script += f":{chain} - [0:0]\n-X {chain}\n"
        script += "COMMIT\n"
        proc = subprocess.run([_tool(version, "-restore"), "--noflush", "--wait"], input=script.encode(),
                              capture_output=True)
        if proc.returncode:
            raise CniError(INTERNAL, "failed to tear down IP masquerade", proc.stderr.decode().strip())

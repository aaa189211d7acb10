"""kube-proxy's chain-name hash, shared by the iptables and nftables renderers (kube-proxy names
its nftables chains from the same hash, cut to eight characters)."""

from __future__ import annotations

import hashlib

_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_B32_PAIRS = [a + b for a in _B32 for b in _B32]  # 10 bits -> 2 characters


def chain_hash(text: str) -> str:
    """kube-proxy's chain hash: base32(sha256(text))[:16]. Sixteen base32 characters are exactly
    the first ten digest bytes, encoded here 10 bits at a time (base64.b32encode is pure Python
    in 3.11 and was most of the render time)."""
    v = int.from_bytes(hashlib.sha256(text.encode()).digest()[:10], "big")
    p = _B32_PAIRS
    return (p[v >> 70] + p[(v >> 60) & 1023] + p[(v >> 50) & 1023] + p[(v >> 40) & 1023]
            + p[(v >> 30) & 1023] + p[(v >> 20) & 1023] + p[(v >> 10) & 1023] + p[v & 1023])


def port_proto_hash(service_port: str, protocol: str) -> str:
    return chain_hash(service_port + protocol)

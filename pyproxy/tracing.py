"""What a trace of a new connection reports, whichever rules it walked (iptables or nftables):
the packet as rewritten on the way, and each possible outcome with its probability."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    dport: int
    proto: str = "tcp"
    in_iface: str = ""
    local_origin: bool = False  # sent by a process on the node itself
    mark: int = 0
    dnat: tuple[str, int] | None = None
    masquerade: bool = False


@dataclass
class Outcome:
    verdict: str  # ACCEPT, DROP, REJECT
    probability: float
    packet: Packet
    rules: list[str] = field(default_factory=list)

    def describe(self) -> str:
        target = f"{self.packet.dnat[0]}:{self.packet.dnat[1]}" if self.packet.dnat else f"{self.packet.dst}:{self.packet.dport}"
        if self.verdict != "ACCEPT":
            return self.verdict
        return f"ACCEPT to {target}" + (" (masqueraded)" if self.packet.masquerade else " (source kept)")

    def to_json(self) -> dict:
        return {"verdict": self.verdict, "probability": round(self.probability, 6),
                "destination": (f"{self.packet.dnat[0]}:{self.packet.dnat[1]}" if self.packet.dnat
                                else f"{self.packet.dst}:{self.packet.dport}"),
                "dnat": self.packet.dnat is not None, "masquerade": self.packet.masquerade, "rules": self.rules}

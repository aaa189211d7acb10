"""`pyproxy lab demo`: show what the lab's dataplane does, as a table a person can read."""

from __future__ import annotations

import itertools
from typing import Callable

from .lab import Lab, Reply


def _try(lab: Lab, src: str, ip: str, port: int, proto: str) -> Reply | str:
    try:
        return lab.request(src, ip, port, proto, timeout=1.0)
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as err:
        return err.strerror or str(err)


def pod_to_pod(lab: Lab, echo: Callable[[str], None]) -> bool:
    echo("\npod to pod (every pod reaches every other pod by IP; the server reports the source it saw)")
    echo(f"  {'from':<10} {'to':<10} {'proto':<5} {'answered by':<12} {'source seen':<15} ok")
    ok = True
    for src, dst in itertools.permutations(lab.pods, 2):
        for proto in ("tcp", "udp"):
            reply = _try(lab, src, lab.pods[dst].ip, lab.pods[dst].ports[0], proto)
            good = isinstance(reply, Reply) and reply.pod == dst and reply.client == lab.pods[src].ip
            ok &= good
            answered, seen = (reply.pod, reply.client) if isinstance(reply, Reply) else (reply, "-")
            echo(f"  {src:<10} {dst:<10} {proto:<5} {answered:<12} {seen:<15} {'yes' if good else 'NO'}")
    return ok


def run_demo(lab: Lab, echo: Callable[[str], None]) -> bool:
    echo(f"lab {lab.spec.name}: {len(lab.spec.nodes)} nodes, {len(lab.pods)} pods, up")
    return pod_to_pod(lab, echo)

"""Keep a Responder's zone in step with a source: rebuild on every change (coalesced over 50 ms)
and swap it in whole, so a query never sees half a zone."""

from __future__ import annotations

import logging
import threading
import time

from .server import Responder, warm
from .zone import build_zone

log = logging.getLogger("pyproxy.dns")


def follow(source, responder: Responder, zone: str, ttl: int, stop: threading.Event) -> None:
    source.start()
    store = source.store
    built = -1
    while not stop.is_set():
        if not source.synced() or store.version == built:
            store.wait_for_change(store.version if source.synced() else -2, 0.5)
            continue
        time.sleep(0.05)  # let a burst of events land in one rebuild
        cluster, version = store.snapshot()
        start = time.monotonic()
        new = build_zone(cluster, zone, ttl)
        # Unchanged names keep their rendered answers; the rest render on first query (rendering
        # them all here would hold the GIL for seconds at 1,000 services and starve the UDP loop).
        warm(new, responder.zone, render=False)
        responder.zone = new  # swapped whole: a query sees the old zone or the new one
        built = version
        log.info("zone %s rebuilt: %d services, %.3fs", zone, len(cluster.services), time.monotonic() - start)
    source.stop()

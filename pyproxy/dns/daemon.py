"""Keep a Responder's zone in step with a source: on every change (coalesced over 50 ms) the
ZoneBuilder makes the next version from the services that changed, and it is swapped in whole, so
a query never sees half a zone."""

from __future__ import annotations

import logging
import threading
import time

from .server import Responder
from .zone import ZoneBuilder

log = logging.getLogger("pyproxy.dns")


def follow(source, responder: Responder, zone: str, ttl: int, stop: threading.Event) -> None:
    source.start()
    store = source.store
    follower = store.follow()  # what changed since the last update: no walk over every object
    try:
        builder, built = ZoneBuilder(zone, ttl), -1
        while not stop.is_set():
            if not source.synced() or store.version == built:
                store.wait_for_change(store.version if source.synced() else -2, 0.5)
                continue
            time.sleep(0.05)  # let a burst of events land in one update
            cluster, version, changed = follower.take()
            start = time.monotonic()
            # Unchanged names keep their rendered answers; changed ones render on first query.
            responder.zone = builder.update(cluster, changed)  # swapped whole: a query sees one version or the other
            built = version
            log.info("zone %s updated: %d services, %.3fs", zone, len(cluster.services), time.monotonic() - start)
    finally:
        store.unfollow(follower)
        source.stop()

"""The sync loop for `pyproxy run`: follow a manifests file and keep the kernel in step.

A bounded-frequency runner, like kube-proxy's: changes are applied no sooner than minSyncPeriod
after the previous sync, a full sync runs every syncPeriod and after any failure. A file that
cannot be parsed keeps the previous state (and rules) in place.
"""

from __future__ import annotations

import logging
import signal
import time

from .config import ProxyConfig
from .proxier import Proxier
from .sources.manifests import ManifestError, ManifestWatcher, load_manifests

log = logging.getLogger("pyproxy")


def run_from_file(path: str, node: str, config: ProxyConfig, families: tuple[int, ...] = (4,),
                  once: bool = False, poll: float = 0.1) -> int:
    proxier = Proxier(node, config, families)
    watcher = ManifestWatcher(path)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    cluster = None
    last_sync = last_full = float("-inf")
    pending = True
    failed = False
    while not stop:
        now = time.monotonic()
        if watcher.changed():
            try:
                loaded = load_manifests(path)
            except ManifestError as err:
                log.error("keeping the previous state: %s", err)
            else:
                for error in loaded.errors:
                    log.warning("skipped: %s", error)
                cluster, pending = loaded, True
        full = failed or now - last_full >= config.sync_period
        if cluster is not None and (pending or full) and now - last_sync >= config.min_sync_period:
            try:
                report = proxier.sync(cluster, full=full)
            except Exception as err:  # noqa: BLE001 - keep running; the next sync is full
                log.error("sync failed, previous rules left in place: %s", err)
                failed = True
                if once:
                    return 1
            else:
                failed = False
                for family, result in report.results.items():
                    log.info("synced ipv%d: %s, %d service ports, %d chains written, %d deleted, "
                             "render %.3fs, apply %.3fs, %d stale UDP flows removed",
                             family, "full" if result.full else "partial", len(report.view.family(family)),
                             result.chains_written, result.chains_deleted, report.render_seconds, result.seconds,
                             report.stale_flows_deleted)
                if full:
                    last_full = now
                if once:
                    return 0
            last_sync, pending = now, False
        time.sleep(poll)
    log.info("stopping; rules are left in place")
    return 0

"""The manifests file as a live source: polled, re-parsed when it changes, merged into a Store
object by object (unchanged objects keep their instances).

A file that cannot be used (missing, empty, truncated, not YAML, no Kubernetes object) keeps the
last good state and says why once; the file is followed again as soon as it is good. The thread
never dies: an unexpected error is logged and polling goes on (`failing` tells /healthz).
"""

from __future__ import annotations

import logging
import threading

from .manifests import ManifestError, ManifestWatcher, load_manifests
from .store import Store

log = logging.getLogger("pyproxy.file")


class FileSource:
    def __init__(self, path: str, poll: float = 0.1) -> None:
        self.path = path
        self.poll = poll
        self.store = Store()
        self.watcher = ManifestWatcher(path)
        self.stopped = threading.Event()
        self.reported: set[str] = set()
        self.problem = ""  # why the file is not in effect now, "" when it is
        self.failing = False  # an unexpected error in the last poll

    def load(self) -> None:
        try:
            cluster = load_manifests(self.path)
        except ManifestError as err:
            if str(err) != self.problem:  # once per change, not once per poll
                log.error("keeping the previous state: %s", err)
                self.problem = str(err)
            return
        if self.problem:
            log.info("%s is good again: following it", self.path)
            self.problem = ""
        for error in cluster.errors:
            if error not in self.reported:  # logged once, not on every reload
                log.warning("skipped: %s", error)
                self.reported.add(error)
        with self.store.lock:
            for kind, new in (("Service", cluster.services), ("EndpointSlice", cluster.slices), ("Node", cluster.nodes),
                              ("ServiceCIDR", cluster.service_cidrs)):
                for key in [k for k in self.store.table(kind) if k not in new]:
                    self.store.set(kind, key, None)
                for key, obj in new.items():
                    self.store.set(kind, key, obj)
            self.store.synced.update(Service=True, EndpointSlice=True, Node=True)
            self.store.changed.notify_all()

    def poll_once(self) -> None:
        try:
            if self.watcher.changed():
                self.load()
            self.failing = False
        except Exception:  # noqa: BLE001 - the source must outlive any one bad read
            if not self.failing:
                log.exception("reading %s failed; keeping the previous state and polling on", self.path)
            self.failing = True

    def run(self) -> None:
        while not self.stopped.is_set():
            self.poll_once()
            self.stopped.wait(self.poll)

    def start(self) -> None:
        self.poll_once()
        threading.Thread(target=self.run, name="file-source", daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()

    def synced(self) -> bool:
        return self.store.synced.get("Service", False)

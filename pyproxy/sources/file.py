"""The manifests file as a live source: polled, re-parsed when it changes, merged into a Store
object by object (unchanged objects keep their instances)."""

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

    def load(self) -> None:
        try:
            cluster = load_manifests(self.path)
        except ManifestError as err:
            log.error("keeping the previous state: %s", err)
            return
        for error in cluster.errors:
            if error not in self.reported:  # logged once, not on every reload
                log.warning("skipped: %s", error)
                self.reported.add(error)
        with self.store.lock:
            for kind, new in (("Service", cluster.services), ("EndpointSlice", cluster.slices), ("Node", cluster.nodes)):
                for key in [k for k in self.store.table(kind) if k not in new]:
                    self.store.set(kind, key, None)
                for key, obj in new.items():
                    self.store.set(kind, key, obj)
            self.store.synced.update(Service=True, EndpointSlice=True, Node=True)
            self.store.changed.notify_all()

    def run(self) -> None:
        while not self.stopped.is_set():
            if self.watcher.changed():
                self.load()
            self.stopped.wait(self.poll)

    def start(self) -> None:
        if self.watcher.changed():
            self.load()
        threading.Thread(target=self.run, name="file-source", daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()

    def synced(self) -> bool:
        return self.store.synced.get("Service", False)

"""Events on this node's Node, as kube-proxy records them (events.k8s.io/v1): `Starting` once the
sources run, `FailedToStartProxierHealthcheck` / `FailedToStartMetricServer` when a server cannot
listen.

Never in a sync's way: events go through a small queue to one background thread; when the queue
is full (an API server that does not answer) new events are dropped and counted, as client-go's
recorder drops under pressure. A failed POST is logged once per kind of failure, not per event.
"""

from __future__ import annotations

import datetime
import logging
import queue
import threading
import time
from typing import Any

log = logging.getLogger("pyproxy")

ACTION = "StartKubeProxy"  # kube-proxy's action for all of these
QUEUE_SIZE = 25
MIN_INTERVAL = 0.1  # seconds between two POSTs: a crash-looping node must not flood the API


class EventRecorder:
    def __init__(self, client: Any, node_name: str, controller: str = "kube-proxy") -> None:
        self.client, self.node_name, self.controller = client, node_name, controller
        self.dropped = 0
        self._queue: queue.Queue[dict] = queue.Queue(QUEUE_SIZE)
        self._failures: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()

    def event(self, type_: str, reason: str, note: str = "") -> None:
        """Queue one event about the node (type_ Normal or Warning); never blocks."""
        now = datetime.datetime.now(datetime.timezone.utc)
        body = {
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            # client-go names events "<regarding>.<unix nanoseconds in hex>"; cluster-scoped
            # objects' events live in "default"
            "metadata": {"name": f"{self.node_name}.{time.time_ns():x}", "namespace": "default"},
            "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "reportingController": self.controller, "reportingInstance": f"{self.controller}-{self.node_name}",
            "action": ACTION, "reason": reason, "note": note[:1024], "type": type_,
            "regarding": {"kind": "Node", "name": self.node_name, "uid": self.node_name},
        }
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            try:
                self.client.post("/apis/events.k8s.io/v1/namespaces/default/events", body)
            except Exception as err:  # noqa: BLE001 - an event is never worth more than a log line
                kind = type(err).__name__
                if kind not in self._failures:
                    self._failures.add(kind)
                    log.warning("cannot record event %s on node %s: %s", body["reason"], self.node_name, err)
            self._queue.task_done()
            time.sleep(MIN_INTERVAL)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued event was sent or given up on (for a clean exit)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._queue.unfinished_tasks

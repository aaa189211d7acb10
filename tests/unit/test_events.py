"""The event recorder's promises that the real API server cannot produce on demand: an API that
hangs or refuses never blocks the caller, fills memory, or floods the log. (The events themselves
are checked against upstream's kube-apiserver in tests/k8s/test_real_api.py.)"""

import logging
import threading
import time

from pyproxy.sources import events
from pyproxy.sources.events import EventRecorder


class HangingApi:
    """Stand-in for an API server that accepts the connection and never answers."""

    def __init__(self):
        self.release = threading.Event()
        self.posts = 0

    def post(self, path, body):
        self.posts += 1
        self.release.wait(10)


class RefusingApi:
    def __init__(self):
        self.bodies = []

    def post(self, path, body):
        self.bodies.append(body)
        raise ConnectionRefusedError("connection refused")


def test_a_hanging_api_never_blocks_the_caller_and_the_queue_is_bounded():
    api = HangingApi()
    recorder = EventRecorder(api, "n1")
    start = time.monotonic()
    for _ in range(events.QUEUE_SIZE + 40):
        recorder.event("Normal", "Starting")
    assert time.monotonic() - start < 0.5
    assert recorder.dropped >= 39, "events beyond the queue are dropped, not kept"
    api.release.set()


def test_a_refusing_api_is_logged_once_and_events_keep_kube_proxys_shape(caplog, monkeypatch):
    monkeypatch.setattr(events, "MIN_INTERVAL", 0)
    api = RefusingApi()
    recorder = EventRecorder(api, "n1")
    with caplog.at_level(logging.WARNING, logger="pyproxy"):
        for _ in range(5):
            recorder.event("Warning", "FailedToStartMetricServer", "cannot listen on 127.0.0.1:10249")
        assert recorder.flush()
    assert len(api.bodies) == 5
    assert sum("cannot record event" in r.message for r in caplog.records) == 1
    body = api.bodies[0]
    assert (body["reportingController"], body["reportingInstance"], body["action"], body["regarding"]) == \
        ("kube-proxy", "kube-proxy-n1", "StartKubeProxy", {"kind": "Node", "name": "n1", "uid": "n1"})
    assert body["metadata"]["namespace"] == "default" and body["metadata"]["name"].startswith("n1.")

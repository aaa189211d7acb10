"""The manifests file source never dies silently (bad-input issue, finding 2): an unexpected error
while reading is logged once, polling goes on, and /healthz says the source is failing until a
read works again."""

from __future__ import annotations

import logging

from pyproxy.health import ProxyHealth
from pyproxy.sources import file as file_source


def test_an_unexpected_error_is_logged_once_and_reported_by_healthz(tmp_path, monkeypatch, caplog):
    path = tmp_path / "cluster.yaml"
    path.write_text("apiVersion: v1\nkind: List\nitems: []\n")
    source = file_source.FileSource(str(path))
    health = ProxyHealth(30)
    health.node_eligible = True  # the Node is there: only the source can fail /healthz here
    health.source_failing = lambda: source.failing
    real = file_source.load_manifests
    monkeypatch.setattr(file_source, "load_manifests", lambda p: (_ for _ in ()).throw(MemoryError("boom")))
    with caplog.at_level(logging.ERROR):
        for content in ("a", "ab", "abc"):  # three changes, three failing polls
            path.write_text(content)
            source.poll_once()
    assert source.failing and health.healthz()[0] == 503 and health.healthz()[1]["sourceFailing"]
    assert sum("reading" in r.getMessage() for r in caplog.records) == 1, "logged once, not every poll"
    monkeypatch.setattr(file_source, "load_manifests", real)
    path.write_text("apiVersion: v1\nkind: List\nitems: []\n")
    source.poll_once()
    assert not source.failing and health.healthz()[0] == 200

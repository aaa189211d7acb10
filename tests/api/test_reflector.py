"""The API source against tests/apiserver.py: a stand-in kube-apiserver (none can be installed
here) speaking the real list/watch protocol to the real `kubernetes` client, over loopback.
Each fault ends with the store identical to the server's state."""

from __future__ import annotations

import time

import pytest

from pyproxy.model.parse import parse_object
from pyproxy.sources.kube import KubeClient, KubeSource, wait_until
from tests.apiserver import FakeApiServer
from tests.factories import endpoint_slice, service


# this file's objects: one unnamed port (80 -> 8080), apiVersion and (Services) labels written
SERVICE = {"ports": (80,), "labels": {}, "api_version": True}
SLICE = {"ports": (8080,), "api_version": True}


@pytest.fixture
def api():
    server = FakeApiServer(bookmark_interval=0.2)
    yield server
    server.stop()


@pytest.fixture
def source(api, tmp_path):
    client = KubeClient(api.kubeconfig(str(tmp_path / "kubeconfig")))
    src = KubeSource(client, "n1", page_size=2, watch_timeout=2, read_slack=1, backoff_base=0.05, backoff_max=0.5)
    yield src
    src.stop()


def matches_server(api: FakeApiServer, source: KubeSource) -> bool:
    """Every object the server holds (but those the selector excludes), parsed, and nothing else."""
    want_s = {k: parse_object(o) for k, o in api.state("Service").items()
              if "service.kubernetes.io/service-proxy-name" not in o["metadata"].get("labels", {})}
    want_e = {k: parse_object(o) for k, o in api.state("EndpointSlice").items()}
    c = source.store.cluster
    return c.services == want_s and c.slices == want_e


def converge(api, source, timeout=8.0) -> None:
    assert wait_until(lambda: matches_server(api, source), timeout), (
        sorted(source.store.cluster.services), sorted(api.state("Service")))


def populate(api, n=5):
    for i in range(n):
        api.apply(service(f"s{i}", f"10.96.0.{i + 1}", **SERVICE))
        api.apply(endpoint_slice(f"s{i}", [f"10.244.0.{i + 1}"], **SLICE))


def test_paginated_list_then_watch(api, source):
    populate(api)
    api.apply(service("claimed", "10.96.1.1", ports=(80,), labels={"service.kubernetes.io/service-proxy-name": "other"},
                      api_version=True))
    source.start()
    converge(api, source)
    assert source.synced()
    assert any("continue=" in r for r in api.requests), "the LIST was paginated"
    api.apply(service("late", "10.96.0.50", **SERVICE))
    api.delete("Service", "ns", "s0")
    converge(api, source)


def test_dropped_connections(api, source):
    populate(api)
    source.start()
    converge(api, source)
    api.faults.drop_watch_after = 1
    for i in range(6):
        api.apply(endpoint_slice(f"s{i % 5}", [f"10.244.1.{i + 1}", "10.244.2.1"], **SLICE))
    time.sleep(0.5)
    api.faults.drop_watch_after = None
    converge(api, source)


def test_stalled_stream_is_noticed_by_the_read_timeout(api, source):
    populate(api)
    source.start()
    converge(api, source)
    api.faults.stall_watches = True
    time.sleep(2.5)  # the running watches end (timeoutSeconds=2) and the new ones stall
    api.apply(service("during-stall", "10.96.0.60", **SERVICE))
    api.faults.stall_watches = False
    start = time.monotonic()
    converge(api, source, timeout=10)
    assert time.monotonic() - start > 0.5, "the stalled watch could only be left by its read timeout"


def test_gone_relists_and_emits_only_the_differences(api, source):
    populate(api)
    source.start()
    converge(api, source)
    relists = [r.relists for r in source.reflectors]
    api.stop()
    api.apply(service("s0", "10.96.0.99", **SERVICE))  # changed
    api.delete("Service", "ns", "s1")  # deleted
    api.apply(service("new", "10.96.0.77", **SERVICE))  # added
    api.compact()  # the history is gone: watching from the old version must fail with 410
    version = source.store.version
    api.start()
    converge(api, source)
    assert source.reflectors[0].relists == relists[0] + 1
    assert source.store.version - version == 3, "a relist applies the differences, not everything again"


def test_watch_error_410_relists(api, source):
    populate(api, 2)
    source.start()
    converge(api, source)
    api.faults.gone_once = True
    api.apply(service("after-410", "10.96.0.70", **SERVICE))
    converge(api, source)


def test_list_failures_are_retried(api, source):
    populate(api)
    api.faults.list_errors = 4
    source.start()
    converge(api, source)
    assert api.faults.list_errors == 0


def test_slow_list_with_changes_meanwhile(api, source):
    populate(api)
    api.faults.list_delay = 1.0
    source.start()
    time.sleep(0.3)
    api.apply(service("during-list", "10.96.0.80", **SERVICE))
    api.delete("Service", "ns", "s2")
    converge(api, source)


def test_invalid_objects_are_logged_once_and_skipped(api, source, caplog):
    populate(api, 2)
    bad = service("bad", "10.96.0.300", **SERVICE)
    api.apply(bad)
    source.start()
    wait_until(lambda: "ns/s1" in source.store.cluster.services, 5)
    api.faults.drop_watch_after = 1  # reconnects and re-reads must not repeat the warning
    api.apply(service("s0", "10.96.0.11", **SERVICE))
    time.sleep(1)
    api.faults.drop_watch_after = None
    assert "ns/bad" not in source.store.cluster.services
    assert sum("Service ns/bad" in r.getMessage() for r in caplog.records) == 1

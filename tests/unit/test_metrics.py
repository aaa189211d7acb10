"""kube-proxy's change metrics as kube-proxy counts them: *_pending is the number of services
and EndpointSlices changed and not yet synced (not the events), and a slice's trigger time from
before the proxy started is no programming latency of this proxy."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from pyproxy.metrics import Metrics
from pyproxy.model.parse import parse_object
from pyproxy.sources.store import Store
from tests.factories import endpoint_slice, service


def test_pending_counts_changed_objects_until_a_sync_takes_them():
    store = Store()
    with store.lock:
        for n in range(3):  # one service changed three times is one pending service
            store.set("Service", "default/web", parse_object(service("web", "10.96.0.10", selector={"v": str(n)})))
        store.set("Service", "default/api", parse_object(service("api", "10.96.0.11")))
        store.set("EndpointSlice", "default/web-1", parse_object(endpoint_slice("web", ["10.244.1.5"])))
    assert store.pending_counts() == (2, 1)
    store.snapshot()  # a reader that is not the sync loop takes nothing
    assert store.pending_counts() == (2, 1)
    store.snapshot(take_pending=True)
    assert store.pending_counts() == (0, 0)


def test_each_follower_takes_its_own_changes_and_leaves_the_sync_loops_pending_alone():
    store = Store()
    dns, other = store.follow(), store.follow()
    with store.lock:
        store.set("Service", "default/web", parse_object(service("web", "10.96.0.10")))
        store.set("EndpointSlice", "default/web-1", parse_object(endpoint_slice("web", ["10.244.1.5"])))
        store.set("Service", "default/web", parse_object(service("web", "10.96.0.10")))  # the same: no change
    cluster, _, changed = dns.take()
    assert changed == {"Service": {"default/web"}, "EndpointSlice": {"default/web-1"}} and "default/web" in cluster.services
    with store.lock:
        store.set("Service", "default/web", None)
        store.set("Service", "default/api", parse_object(service("api", "10.96.0.11")))
    cluster, _, changed = dns.take()
    assert changed == {"Service": {"default/web", "default/api"}}, "only what changed since it last took"
    assert set(cluster.services) == {"default/api"} and set(cluster.slices) == {"default/web-1"}, \
        "its own copy, brought up to date with what changed"
    assert cluster == store.snapshot()[0]
    cluster, _, changed = other.take()
    assert changed == {"Service": {"default/web", "default/api"}, "EndpointSlice": {"default/web-1"}}
    assert cluster == store.snapshot()[0] and cluster is not dns.cluster
    assert store.pending_counts() == (2, 1), "the sync loop's pending counts are its own"


def test_trigger_times_before_the_start_are_ignored():
    metrics = Metrics()
    iso = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")  # noqa: E731
    now = time.time() + 2
    assert metrics.observe_trigger(iso(metrics.started - 60), now) is None, "a change made before we started"
    assert 0.9 < metrics.observe_trigger(iso(now - 1), now) < 1.1

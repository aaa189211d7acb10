"""pyproxy's pytest fixtures. Enabled by `-p pyproxy.testing.plugin`, by `pyproxy_lab = true` in
the ini file (the `pytest11` entry point, pyproxy.testing.entry, then loads this module), or by
`pytest_plugins = ["pyproxy.testing.plugin"]` in a conftest; an unrelated suite never loads it.

Fixtures, once enabled:
  pyproxy_cluster   a Cluster from the test's `pyproxy_lab` marker (spec=, backend=,
                    iptables_variant=, control_plane=), or the default two-node lab; up for the
                    test, always removed after it (failure and Ctrl-C included)
  pyproxy_cluster_factory   make(spec, **options) -> Cluster, as many as a test wants
A test is skipped, with the reason, where the lab cannot run (not root, no br_netfilter).
"""

from __future__ import annotations

import atexit

import pytest

DEFAULT_SPEC = {
    "nodes": [{"name": "node1", "podCIDR": "10.244.1.0/24"}, {"name": "node2", "podCIDR": "10.244.2.0/24"}],
    "pods": [{"name": "web-1", "node": "node1", "labels": {"app": "web"}},
             {"name": "web-2", "node": "node2", "labels": {"app": "web"}},
             {"name": "client", "node": "node1", "labels": {"app": "client"}}],
}
_live: list = []  # clusters up right now, removed at exit whatever happened


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "pyproxy_lab(spec=None, backend='iptables', iptables_variant='auto', "
                                       "control_plane='none'): the lab the pyproxy_cluster fixture builds")


def _down_all() -> None:
    for cluster in list(_live):
        cluster.down()
        _live.remove(cluster)


atexit.register(_down_all)


@pytest.fixture
def pyproxy_cluster_factory():
    from . import Cluster, LabUnavailable, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    made = []

    def make(spec=None, **options):
        try:
            cluster = Cluster(spec or DEFAULT_SPEC, **options)
        except LabUnavailable as err:
            pytest.skip(str(err))
        _live.append(cluster)
        made.append(cluster)
        return cluster.up()

    try:
        yield make
    finally:  # runs after a failed test and on Ctrl-C as well
        for cluster in made:
            cluster.down()
            if cluster in _live:
                _live.remove(cluster)

@pytest.fixture
def pyproxy_cluster(request, pyproxy_cluster_factory):
    marker = request.node.get_closest_marker("pyproxy_lab")
    options = dict(marker.kwargs) if marker else {}
    return pyproxy_cluster_factory(options.pop("spec", None), **options)

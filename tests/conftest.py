import os
import subprocess
import uuid

import pytest


UPSTREAM_TESTS = ("k8s", "node")  # the folders of tests against upstream's own programs
UPSTREAM_COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "kube-proxy", "coredns")
NODE_COMPONENTS = ("kubelet", "containerd", "crictl", "agnhost")  # tests/node's real nodes
upstream_build_error: list[str] = []


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        folders = {part for item in items for part in item.nodeid.split("/")[:2]}
        if folders & set(UPSTREAM_TESTS):
            _build_upstream(config, UPSTREAM_COMPONENTS + (NODE_COMPONENTS if "node" in folders else ()))
        return
    skip = pytest.mark.skip(reason="needs root to create network namespaces")
    for item in items:
        if "netns" in item.nodeid.split("/"):
            item.add_marker(skip)


def _build_upstream(config, components: tuple[str, ...]) -> None:
    """Build upstream's programs into their cache before the tests that use them run (a cold
    build takes minutes, outside any test's timeout); a failure fails those tests, naming it."""
    from pyproxy.lab import upstream

    if upstream.built(*components):
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter:
        reporter.write_line(f"building upstream {', '.join(components)} into {upstream.cache_dir()} "
                            "(cold: several minutes)")
    try:
        upstream.ensure(*components, quiet=True)
    except upstream.UpstreamError as err:
        upstream_build_error.append(str(err))


class Namespaces:
    """Network namespaces a test creates; every one is deleted when the test ends."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.names: list[str] = []

    def new(self, role: str) -> str:
        name = f"pxt-{self.tag}-{role}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        self.names.append(name)
        return name

    def delete(self, name: str) -> None:
        subprocess.run(["ip", "netns", "del", name], check=False)
        if name in self.names:
            self.names.remove(name)

    def cleanup(self) -> None:
        for name in list(self.names):
            self.delete(name)


@pytest.fixture
def namespaces():
    ns = Namespaces()
    yield ns
    ns.cleanup()


@pytest.fixture(scope="module")
def scratch_namespace():
    """One empty network namespace for a whole module (its lo up), deleted after it."""
    ns = Namespaces()
    yield ns.new("scratch")
    ns.cleanup()

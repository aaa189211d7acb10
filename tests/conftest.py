import os
import subprocess
import uuid

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root to create network namespaces")
    for item in items:
        if "netns" in item.nodeid.split("/"):
            item.add_marker(skip)


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

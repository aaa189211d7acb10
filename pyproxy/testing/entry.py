"""The `pytest11` entry point: only an ini switch. `pyproxy_lab = true` in a project's pytest
configuration loads pyproxy's fixtures (pyproxy.testing.plugin); otherwise nothing happens."""

from __future__ import annotations


def pytest_addoption(parser) -> None:
    parser.addini("pyproxy_lab", "load pyproxy's lab fixtures (pyproxy_cluster, pyproxy_cluster_factory)",
                  type="bool", default=False)


def pytest_configure(config) -> None:
    if config.getini("pyproxy_lab"):
        config.pluginmanager.import_plugin("pyproxy.testing.plugin")

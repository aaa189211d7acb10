"""Bad input against the live kernel (issue: bad input everywhere). Each test is named after the
finding it guards: rule injection through object names, and a manifests file that is truncated,
broken or removed while `pyproxy run` follows it."""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import time

import pytest
import yaml

from pyproxy.config import ProxyConfig
from pyproxy.iptables.render import render
from pyproxy.lab import Lab
from pyproxy.lab.cluster import cluster_objects
from pyproxy.lab.spec import parse_spec
from pyproxy.model.parse import parse_objects
from pyproxy.model.types import Endpoint, EndpointPort, EndpointSlice, Service, ServicePort
from pyproxy.view import build_view
from tests.factories import service

from .test_cli import PYPROXY, SPEC, _svc, _wait_for, cli, save

EVIL = 'evil"\n-A INPUT -s 203.0.113.99/32 -j ACCEPT\n#'


def _service(name: str, ip: str, port_name: str = "") -> dict:
    return service(name, ip, ((port_name, 80) if port_name else 80,), namespace="default", api_version=True)


@pytest.mark.parametrize("variant", ["legacy", "nft"])
def test_a_name_carrying_rules_is_refused_and_the_other_services_are_programmed(namespaces, tmp_path, variant):
    ns = namespaces.new("node")
    path = tmp_path / "cluster.yaml"
    long_name = "x" * 1000
    path.write_text(yaml.safe_dump_all([_service(EVIL, "10.96.0.5"), _service(long_name, "10.96.0.6"),
                                        _service("quote", "10.96.0.7", port_name='p"'),
                                        _service("good", "10.96.0.8")]))
    out = cli(ns, "run", "--once", "--iptables-variant", variant, "-f", str(path), "--node", "n1")
    assert out.returncode == 0, out.stderr
    assert "metadata.name" in out.stderr and "DNS-1035" in out.stderr
    assert "spec.ports[0].name" in out.stderr
    rules = save(ns, variant)
    assert "203.0.113.99" not in rules
    assert '"default/good has no endpoints"' in rules, "the valid service is still programmed"
    assert cli(ns, "cleanup", "--iptables-variant", variant).returncode == 0
    assert "203.0.113.99" not in save(ns, variant)


def test_the_renderer_escapes_names_even_when_the_model_is_bypassed(namespaces):
    """The second guard: a Service built in code, never validated, still cannot end a rule."""
    ns = namespaces.new("node")
    evil = Service(namespace="default", name=EVIL, cluster_ips=parse_objects([_service("x", "10.96.0.5")])
                   .services["default/x"].cluster_ips, ports=(ServicePort(name='p"\n', protocol="TCP", port=80),))
    good = parse_objects([_service("good", "10.96.0.8")]).services["default/good"]
    cluster = parse_objects([])
    cluster.services.update({evil.key: evil, good.key: good})
    config = ProxyConfig()
    text = render(build_view(cluster, "n1"), config, 4).restore_text()
    assert "\n-A INPUT" not in text
    restore = subprocess.run(["ip", "netns", "exec", ns, "iptables-legacy-restore"], input=text, text=True,
                             capture_output=True)
    assert restore.returncode == 0, restore.stderr
    rules = save(ns, "legacy")
    assert "203.0.113.99/32 -j ACCEPT" not in "\n".join(l for l in rules.splitlines() if l.startswith("-A INPUT"))
    assert '"default/good has no endpoints"' in rules


def test_nftables_escapes_names_even_when_the_model_is_bypassed(namespaces):
    from pyproxy.nftables.render import render as render_nft

    ns = namespaces.new("node")
    svc = parse_objects([_service("x", "10.96.0.5")]).services["default/x"]
    evil = Service(namespace='a"; }\ntable ip pwn {', name=EVIL, cluster_ips=svc.cluster_ips,
                   ports=(ServicePort(name="p", protocol="TCP", port=80),))
    endpoints = EndpointSlice(evil.namespace, "s", evil.name, "IPv4",
                              (Endpoint(addresses=(ipaddress.ip_address("10.244.1.5"),), node_name="n1"),),
                              (EndpointPort("p", "TCP", 8080),))
    cluster = parse_objects([])
    cluster.services[evil.key] = evil
    cluster.slices["evil/s"] = endpoints
    config = ProxyConfig()
    script = render_nft(build_view(cluster, "n1"), config, 4).script()
    check = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True,
                           capture_output=True)
    assert check.returncode == 0, check.stderr
    tables = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True,
                            text=True).stdout
    assert "pwn" not in tables
    chains = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "chains"], capture_output=True, text=True).stdout
    assert "10.244.1.5" in script and "service-" in chains, "the service's chains were written"


def _daemon(lab: Lab, path) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", lab.node_ns("n1"), PYPROXY, "run", "-f", str(path),
                             "--node", "n1", "--cluster-cidr", "10.244.0.0/16"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_truncated_broken_or_removed_manifests_file_keeps_the_rules(tmp_path):
    lab = Lab(parse_spec({**SPEC, "name": "t-bad"})).up(replace=True)
    proc = None
    try:
        path = tmp_path / "cluster.yaml"
        good = yaml.safe_dump_all(cluster_objects(lab, [_svc("a")]))
        path.write_text(good)
        proc = _daemon(lab, path)
        _wait_for(lab, "a")
        for bad in ("", "# nothing but a comment\n", b"kind: Service\n\xff\xfe\n", "kind: 5\n", "- [1, 2\n"):
            path.write_bytes(bad if isinstance(bad, bytes) else bad.encode())  # `: > FILE`, a bad save
            time.sleep(0.6)
            assert lab.request("client", "10.96.0.10", 80).pod == "a", f"rules lost after writing {bad!r}"
        path.unlink()
        time.sleep(0.6)
        assert lab.request("client", "10.96.0.10", 80).pod == "a", "rules lost when the file was removed"
        path.write_text(yaml.safe_dump_all(cluster_objects(lab, [_svc("b")])))
        assert _wait_for(lab, "b") < 3.0, "the file is followed again once it is good"
        path.write_text("kind: List\nitems: []\n")  # the explicit way to remove everything
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                lab.request("client", "10.96.0.10", 80, timeout=0.3)
            except OSError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("an empty kind: List did not remove the service")
        assert proc.poll() is None, "the daemon is still running"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert "Traceback" not in err, err
        assert "no Kubernetes object in the file" in err
        assert "not UTF-8" in err and "No such file or directory" in err and "is good again" in err
        assert err.count("no Kubernetes object in the file") <= 2, "logged once per change, not per poll"
    finally:
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()
        lab.down()

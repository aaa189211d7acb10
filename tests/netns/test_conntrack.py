"""Stale UDP flows over netlink (pyproxy.netlink.conntrack), in a namespace made here: exactly the
stale flows go, the others stay untouched, TCP flows are never looked at, and a delete of a flow
that ended meanwhile is not an error."""

from __future__ import annotations

import subprocess

from pyproxy import netns
from pyproxy.conntrack import ConntrackCleaner
from pyproxy.netlink.conntrack import Conntrack
from pyproxy.model import parse_objects
from pyproxy.view import build_view

ENDPOINTS = ["10.244.1.2", "10.244.1.3"]


def view(endpoints):
    return build_view(parse_objects([
        {"kind": "Service", "metadata": {"namespace": "ns", "name": "dns"},
         "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 53, "protocol": "UDP"}]}},
        {"kind": "EndpointSlice", "addressType": "IPv4",
         "metadata": {"namespace": "ns", "name": "dns-a", "labels": {"kubernetes.io/service-name": "dns"}},
         "endpoints": [{"addresses": [ip]} for ip in endpoints], "ports": [{"name": "", "port": 53, "protocol": "UDP"}]},
    ]), "n1")


def test_exactly_the_stale_udp_flows_go(namespaces):
    ns = namespaces.new("ct")
    subprocess.run(["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW",
                    "-j", "ACCEPT"], check=True)  # conntrack runs in a namespace once a rule needs it
    with netns.entered(ns):
        ct = Conntrack()
        flows = [((f"10.8.{i // 250}.{i % 250 + 1}", "10.96.0.10", 40000, 53),
                  (("10.244.1.99" if i < 100 else ENDPOINTS[i % 2]), f"10.8.{i // 250}.{i % 250 + 1}", 53, 40000))
                 for i in range(1000)]
        ct.create(flows)
        ct.create([(("10.8.9.9", "10.96.0.10", 1234, 53), ("10.244.1.99", "10.8.9.9", 53, 1234))], protocol="tcp")
        other = [(("10.8.9.8", "10.1.1.1", 5000, 53), ("10.1.1.1", "10.8.9.8", 53, 5000))]  # not a service
        ct.create(other)
        removed = ConntrackCleaner(4).clean(view(ENDPOINTS))
        left = {orig for orig, _ in ct.flows(4, "udp")}
        assert removed == 100
        assert left == {orig for orig, _ in flows[100:]} | {other[0][0]}
        assert len(ct.flows(4, "tcp")) == 1, "TCP flows are not the cleaner's"
        assert ct.delete([flows[0][0]]) == 0, "a flow already gone is not an error"
        ct.close()


def test_after_an_endpoint_change_only_the_suspect_flows_are_asked_for_and_the_stale_ones_go(namespaces):
    """The partial-sync path: the cleaner saw the endpoint 10.244.1.99 before, and now it is
    gone. The kernel is asked only for flows answered from it. Those go; flows to the endpoints
    that stay, an un-NATed flow of another address, and TCP stay."""
    ns = namespaces.new("ct2")
    subprocess.run(["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW",
                    "-j", "ACCEPT"], check=True)
    with netns.entered(ns):
        ct = Conntrack()
        cleaner = ConntrackCleaner(4)
        assert cleaner.clean(view([*ENDPOINTS, "10.244.1.99"])) == 0  # the first look: nothing stale yet
        flows = [((f"10.8.0.{i + 1}", "10.96.0.10", 40000, 53),
                  (("10.244.1.99" if i < 30 else ENDPOINTS[i % 2]), f"10.8.0.{i + 1}", 53, 40000)) for i in range(200)]
        ct.create(flows)
        ct.create([(("10.8.9.9", "10.96.0.10", 1234, 53), ("10.244.1.99", "10.8.9.9", 53, 1234))], protocol="tcp")
        removed = cleaner.clean(view(ENDPOINTS))
        left = {orig for orig, _ in ct.flows(4, "udp")}
        assert removed == 30
        assert left == {orig for orig, _ in flows[30:]}
        assert len(ct.flows(4, "tcp")) == 1
        # a service that had no endpoints gets one: the flow that met "no endpoints" (un-NATed,
        # answered from the ClusterIP itself) goes, found by the ClusterIP as its reply source
        cleaner.clean(view([]))
        ct.create([(("10.8.7.7", "10.96.0.10", 41000, 53), ("10.96.0.10", "10.8.7.7", 53, 41000))])
        assert cleaner.clean(view(ENDPOINTS)) == 1
        assert ("10.8.7.7", "10.96.0.10", 41000, 53) not in {orig for orig, _ in ct.flows(4, "udp")}
        ct.close()

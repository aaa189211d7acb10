"""Clusters for differential tests: Services and EndpointSlices written to the real API server.

Selector-less Services with hand-written EndpointSlices let a case hold what pods cannot easily
produce: terminating and not-ready endpoints, endpoints on other nodes, several slices per
service, multi-port services with named ports. The generator is seeded, so a failing case can be
replayed by its number.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any

NODES = ("n1", "n2")


def _service(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": name}, "spec": spec}


def _slice(service: str, index: int, endpoints: list[dict], ports: list[dict], family: int = 4) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": f"IPv{family}",
            "metadata": {"namespace": "default", "name": f"{service}-{index}",
                         "labels": {"kubernetes.io/service-name": service,
                                    "endpointslice.kubernetes.io/managed-by": "pyproxy-tests"}},
            "endpoints": endpoints, "ports": ports}


def random_case(seed: int, size: int = 8, service_net: str = "10.96.0.0/16",
                dual: bool = False) -> tuple[list[dict], dict[str, str]]:
    """(objects, {service name: LoadBalancer ingress IP}) for one random cluster; `dual`: every
    service dual-stack (an IPv6 cluster IP and IPv6 slices beside the IPv4 ones)."""
    rng = random.Random(seed)
    net = ipaddress.ip_network(service_net)
    objects: list[dict] = []
    lb: dict[str, str] = {}
    used_node_ports: set[int] = set()
    for i in range(size):
        name = f"r{seed}-s{i}"
        kind = rng.choice(["ClusterIP", "ClusterIP", "NodePort", "LoadBalancer"])
        nports = rng.choice([1, 1, 2])
        ports = []
        for p in range(nports):
            entry = {"name": f"p{p}" if nports > 1 else "", "port": 80 + p,
                     "protocol": rng.choice(["TCP", "TCP", "UDP"]), "targetPort": 8080 + p}
            if kind != "ClusterIP":
                node_port = rng.randrange(30000, 32767)
                while node_port in used_node_ports:
                    node_port = rng.randrange(30000, 32767)
                used_node_ports.add(node_port)
                entry["nodePort"] = node_port
            if not entry["name"]:
                del entry["name"]
            ports.append(entry)
        spec: dict[str, Any] = {"type": kind, "clusterIP": str(net.network_address + 1000 + seed * 50 + i),
                                "ports": ports}
        if dual:
            v6 = f"fd00:10:96::{1000 + seed * 50 + i:x}"
            spec.update(clusterIPs=[spec["clusterIP"], v6], ipFamilies=["IPv4", "IPv6"],
                        ipFamilyPolicy="RequireDualStack")
        if kind != "ClusterIP" and rng.random() < 0.5:
            spec["externalTrafficPolicy"] = "Local"
        if rng.random() < 0.2:
            spec["internalTrafficPolicy"] = "Local"
        if rng.random() < 0.25:
            spec["sessionAffinity"] = "ClientIP"
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": rng.choice([10, 10800])}}
        if rng.random() < 0.2:
            spec["externalIPs"] = [f"172.18.100.{rng.randrange(10, 200)}"]
        if kind == "LoadBalancer":
            lb[name] = f"172.18.100.{200 + i}"
            if rng.random() < 0.5:
                spec["loadBalancerSourceRanges"] = rng.choice([["172.18.0.0/24"], ["192.0.2.0/24", "198.51.100.7/32"]])
        objects.append(_service(name, spec))
        slice_ports = [{"name": p.get("name", ""), "port": p["targetPort"], "protocol": p["protocol"]} for p in ports]
        nslices = rng.choice([0, 1, 1, 1, 2])
        for s in range(nslices):
            endpoints = []
            for e in range(rng.choice([0, 1, 2, 3])):
                ready = rng.random() < 0.8
                terminating = not ready and rng.random() < 0.6
                endpoints.append({
                    "addresses": [f"10.244.{rng.choice([1, 2])}.{100 + i * 10 + s * 4 + e}"],
                    "nodeName": rng.choice(NODES),
                    "conditions": {"ready": ready, "serving": ready or (terminating and rng.random() < 0.7),
                                   "terminating": terminating},
                })
            objects.append(_slice(name, s, endpoints, slice_ports))
            if dual:
                v6_endpoints = [{**e, "addresses": [f"fd00:10:244:{e['addresses'][0].split('.')[2]}::"
                                                    f"{int(e['addresses'][0].split('.')[3]):x}"]} for e in endpoints]
                v6_slice = _slice(name, s, v6_endpoints, slice_ports, family=6)
                v6_slice["metadata"]["name"] += "-v6"
                objects.append(v6_slice)
    return objects, lb


def lab_suite_case() -> tuple[list[dict], dict[str, str]]:
    """The lab suite's service shapes (tests/netns/test_services.py), on hand-written slices."""
    def svc(name, ip, **spec):
        return _service(name, {"clusterIP": ip, "ports": spec.pop("ports", [{"port": 80, "targetPort": 80}]), **spec})

    def eps(*specs):
        return [{"addresses": [ip], "nodeName": node, "conditions": cond} for ip, node, cond in specs]

    ready = {"ready": True, "serving": True, "terminating": False}
    term = {"ready": False, "serving": True, "terminating": True}
    web = eps(("10.244.1.10", "n1", ready), ("10.244.2.10", "n2", ready))
    solo = eps(("10.244.2.11", "n2", ready))
    p80 = [{"name": "", "port": 80, "protocol": "TCP"}]
    objects = [
        svc("web", "10.96.0.10"), _slice("web", 0, web, p80),
        svc("multi", "10.96.0.11", ports=[{"name": "a", "port": 80, "targetPort": 80},
                                          {"name": "b", "port": 81, "targetPort": 8080},
                                          {"name": "c", "port": 80, "protocol": "UDP", "targetPort": 8080}]),
        _slice("multi", 0, solo, [{"name": "a", "port": 80, "protocol": "TCP"}, {"name": "b", "port": 8080, "protocol": "TCP"},
                                  {"name": "c", "port": 8080, "protocol": "UDP"}]),
        svc("empty", "10.96.0.12", type="NodePort", ports=[{"port": 80, "targetPort": 80, "nodePort": 30090}]),
        svc("np", "10.96.0.13", type="NodePort", ports=[{"port": 80, "targetPort": 80, "nodePort": 30080}]),
        _slice("np", 0, web, p80),
        svc("local", "10.96.0.14", type="NodePort", externalTrafficPolicy="Local", externalIPs=["172.18.100.10"],
            ports=[{"port": 80, "targetPort": 80, "nodePort": 30081}]),
        _slice("local", 0, solo, p80),
        svc("itp", "10.96.0.15", internalTrafficPolicy="Local"), _slice("itp", 0, web, p80),
        svc("sticky", "10.96.0.16", sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 2}}),
        _slice("sticky", 0, web, p80),
        svc("lb-ok", "10.96.0.17", type="LoadBalancer", loadBalancerSourceRanges=["172.18.0.100/32"],
            ports=[{"port": 80, "targetPort": 80, "nodePort": 30082}]),
        _slice("lb-ok", 0, solo, p80),
        svc("term", "10.96.0.18"), _slice("term", 0, eps(("10.244.1.12", "n1", term), ("10.244.2.12", "n2", ready)), p80),
        svc("allterm", "10.96.0.19"), _slice("allterm", 0, eps(("10.244.1.13", "n1", term), ("10.244.2.13", "n2", term)), p80),
        svc("dns", "10.96.0.20", ports=[{"port": 53, "protocol": "UDP", "targetPort": 80}]),
        _slice("dns", 0, solo, [{"name": "", "port": 80, "protocol": "UDP"}]),
    ]
    return objects, {"lb-ok": "172.18.100.20"}

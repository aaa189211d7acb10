"""`pyproxy lab demo`: show what the lab's dataplane does, as a table a person can read."""

from __future__ import annotations

import itertools
import time
from typing import Callable

from .lab import Lab, Reply


def _try(lab: Lab, src: str, ip: str, port: int, proto: str) -> Reply | str:
    try:
        return lab.request(src, ip, port, proto, timeout=1.0)
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as err:
        return err.strerror or str(err)


def pod_to_pod(lab: Lab, echo: Callable[[str], None]) -> bool:
    echo("\npod to pod (every pod reaches every other pod by IP; the server reports the source it saw)")
    echo(f"  {'from':<10} {'to':<10} {'proto':<5} {'answered by':<12} {'source seen':<15} ok")
    ok = True
    for src, dst in itertools.permutations(lab.pods, 2):
        for proto in ("tcp", "udp"):
            reply = _try(lab, src, lab.pods[dst].ip, lab.pods[dst].ports[0], proto)
            good = isinstance(reply, Reply) and reply.pod == dst and reply.client == lab.pods[src].ip
            ok &= good
            answered, seen = (reply.pod, reply.client) if isinstance(reply, Reply) else (reply, "-")
            echo(f"  {src:<10} {dst:<10} {proto:<5} {answered:<12} {seen:<15} {'yes' if good else 'NO'}")
    return ok


def demo_services(lab: Lab) -> list[dict]:
    """A ClusterIP, a NodePort (externalTrafficPolicy Cluster) and a NodePort with Local policy,
    all selecting the pods labelled app=web."""

    def svc(name: str, ip: str, **spec: object) -> dict:
        return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": name},
                "spec": {"clusterIP": ip, "selector": {"app": "web"}, **spec}}

    return [
        svc("web", "10.96.0.10", ports=[{"port": 80, "targetPort": 8080}]),
        svc("web-np", "10.96.0.11", type="NodePort", ports=[{"port": 80, "targetPort": 8080, "nodePort": 30080}]),
        svc("web-local", "10.96.0.12", type="NodePort", externalTrafficPolicy="Local",
            ports=[{"port": 80, "targetPort": 8080, "nodePort": 30081}]),
    ]


def _program_in_process(lab: Lab, echo: Callable[[str], None]):
    """The built-in control plane: pyproxy's Proxier on every node, fed the demo's objects."""
    from .dataplane import LabDataplane

    dp = LabDataplane(lab)
    reports = dp.apply(demo_services(lab))
    for node, report in reports.items():
        result = report.results[4]
        echo(f"\n{node}: pyproxy programmed {len(report.view.family(4))} service ports "
             f"({dp.proxiers[node].backends[4].restore_tool}, {result.seconds * 1000:.0f} ms)")
    return dp.cleanup


def _program_through_the_api(lab: Lab, echo: Callable[[str], None]):
    """A real control plane: Services written to kube-apiserver, slices from its controller,
    `pyproxy run` on every node following the API as the DaemonSet would."""
    from .proxies import deploy_pyproxy, start_pyproxy

    kube, config = deploy_pyproxy(lab)
    for node in lab.spec.nodes:
        start_pyproxy(lab, node.name, kube, config)
    for svc in demo_services(lab):
        lab.cp.api.apply(svc)
    echo(f"\nkube-apiserver {lab.cp.address}: {len(demo_services(lab))} Services applied; pyproxy runs on "
         f"{', '.join(n.name for n in lab.spec.nodes)} with the pyproxy ServiceAccount's token")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not isinstance(_try(lab, "external", str(lab.spec.nodes[0].ip), 30080, "tcp"),
                                                         Reply):
        time.sleep(0.2)
    return lambda: None  # lab down stops the daemons


def services(lab: Lab, echo: Callable[[str], None]) -> bool:
    cleanup = (_program_through_the_api if lab.cp else _program_in_process)(lab, echo)
    external = str(lab.spec.external_ip)
    client = next((p for p in lab.pods if p.startswith("client")), next(iter(lab.pods)))
    checks = [
        ("ClusterIP 10.96.0.10:80", client, "10.96.0.10", 80, "pod address kept", lambda r: r.client == lab.pods[client].ip),
    ]
    for node in lab.spec.nodes:
        checks.append((f"NodePort {node.ip}:30080 (eTP=Cluster)", "external", str(node.ip), 30080,
                       "client SNATed", lambda r: r.client != external))
    for node in lab.spec.nodes:
        checks.append((f"NodePort {node.ip}:30081 (eTP=Local)", "external", str(node.ip), 30081,
                       "client address kept, local pod", lambda r: r.client == external))
    echo("\nservices (each row: 4 new connections; the server reports the source it saw)")
    echo(f"  {'service':<41} {'from':<10} {'answered by':<18} {'source seen':<15} expect")
    ok = True
    for label, src, ip, port, expectation, good in checks:
        replies = [_try(lab, src, ip, port, "tcp") for _ in range(4)]
        fine = all(isinstance(r, Reply) and good(r) for r in replies)
        ok &= fine
        pods = ",".join(sorted({r.pod if isinstance(r, Reply) else r for r in replies}))
        seen = ",".join(sorted({r.client for r in replies if isinstance(r, Reply)})) or "-"
        echo(f"  {label:<41} {src:<10} {pods:<18} {seen:<15} {expectation}: {'yes' if fine else 'NO'}")
    cleanup()
    return ok


def headless_dns(lab: Lab, echo: Callable[[str], None]) -> bool:
    from .dns import resolve, resolver_for, start_dns

    headless = {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": "web-headless"},
                "spec": {"clusterIP": "None", "selector": {"app": "web"},
                         "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}}
    server = start_dns(lab, [headless, *demo_services(lab)])
    try:
        client = next((p for p in lab.pods if p.startswith("client")), next(iter(lab.pods)))
        web = sorted(p.ip for p in lab.pods.values() if p.labels.get("app") == "web")
        echo(f"\nDNS (pyproxy dns on {lab.spec.nodes[0].name}, asked by {client} at {resolver_for(lab, client)})")
        ok = True
        for name, rdtype, want in (("web-headless.default.svc.cluster.local", "A", web),
                                   ("web.default.svc.cluster.local", "A", ["10.96.0.10"]),
                                   ("_http._tcp.web-headless.default.svc.cluster.local", "SRV", None)):
            got = resolve(lab, client, name, rdtype)
            good = got == want if want is not None else len(got) == len(web)
            ok &= good
            echo(f"  {name:<52} {rdtype:<4} {', '.join(got)}  {'yes' if good else 'NO'}")
        return ok
    finally:
        server.stop()


def run_demo(lab: Lab, echo: Callable[[str], None]) -> bool:
    echo(f"lab {lab.spec.name}: {len(lab.spec.nodes)} nodes, {len(lab.pods)} pods, up")
    ok = pod_to_pod(lab, echo)
    ok = services(lab, echo) and ok
    return headless_dns(lab, echo) and ok

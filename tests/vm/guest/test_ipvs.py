"""The IPVS backend against the real ip_vs module: runs only inside the qemu guest that
tests/vm/test_ipvs_in_vm.py boots (this machine's own kernel has no ip_vs; see tests/vm/qemu.py).

Every test programs the lab with pyproxy in IPVS mode and asserts what a user sees: which pod
answered, the source address it saw, a refusal, a timeout, a connection that survives.
"""

from __future__ import annotations

import collections
import socket
import subprocess
import threading
import time

import pytest

from pyproxy import netns
from pyproxy.config import ProxyConfig
from pyproxy.lab import Lab
from pyproxy.lab.dataplane import LabDataplane
from pyproxy.lab.spec import parse_spec
from tests import factories

SPEC = {
    "name": "t-ipvs",
    "nodes": [{"name": "n1", "podCIDR": "10.244.1.0/24"}, {"name": "n2", "podCIDR": "10.244.2.0/24"}],
    "pods": [
        {"name": "web-1", "node": "n1", "labels": {"app": "web", "tier": "a"}},
        {"name": "web-2", "node": "n2", "labels": {"app": "web", "tier": "a", "side": "two"}},
        {"name": "web-3", "node": "n2", "labels": {"app": "web", "side": "two"}},
        {"name": "client", "node": "n1"},
    ],
}
CLUSTER_IP = "10.96.0.10"


@pytest.fixture(scope="module")
def env():
    lab = Lab(parse_spec(SPEC)).up(replace=True)
    try:
        dp = LabDataplane(lab, ProxyConfig(mode="ipvs", cluster_cidrs=(lab.spec.cluster_cidr,)))
        yield lab, dp
        dp.cleanup()
    finally:
        lab.down()


def service(selector, node_port=0, **spec):
    port = {"name": "http", "port": 80, "targetPort": 80, **({"nodePort": node_port} if node_port else {})}
    return factories.service("web", CLUSTER_IP, (port,), namespace="default", api_version=True,
                             **{"selector": selector, **({"type": "NodePort"} if node_port else {}), **spec})


def ipvs_table(lab, node="n1") -> dict[str, dict[str, tuple[int, int]]]:
    """{virtual server: {real server: (weight, connections ever scheduled)}} from the kernel."""
    from pyroute2 import IPVS

    out = {}
    with netns.entered(lab.node_ns(node)), IPVS() as ipvs:
        for msg in ipvs.service("dump"):
            svc = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
            vs = f"{svc.get_attr('IPVS_SVC_ATTR_ADDR')}:{svc.get_attr('IPVS_SVC_ATTR_PORT')}"
            out[vs] = {}
            for dmsg in ipvs.dest("dump", service=_key(svc)):
                d = dmsg.get_attr("IPVS_CMD_ATTR_DEST")
                stats = d.get_attr("IPVS_DEST_ATTR_STATS64") or d.get_attr("IPVS_DEST_ATTR_STATS")
                rs = f"{d.get_attr('IPVS_DEST_ATTR_ADDR')}:{d.get_attr('IPVS_DEST_ATTR_PORT')}"
                out[vs][rs] = (d.get_attr("IPVS_DEST_ATTR_WEIGHT"), stats.get_attr("IPVS_STATS_ATTR_CONNS"))
    return out


def settled_ipvs_table(lab, node="n1", timeout=10.0):
    """ipvs_table once its counters stop moving: the kernel's estimator folds the per-CPU connection
    counts into what a dump reports every two seconds, so a read right after traffic can lag."""
    deadline = time.monotonic() + timeout
    table = ipvs_table(lab, node)
    while time.monotonic() < deadline:
        time.sleep(2.5)
        again = ipvs_table(lab, node)
        if again == table:
            return table
        table = again
    return table


def _key(svc):
    from pyroute2 import IPVSService

    return IPVSService(addr=svc.get_attr("IPVS_SVC_ATTR_ADDR"), port=svc.get_attr("IPVS_SVC_ATTR_PORT"),
                       protocol=svc.get_attr("IPVS_SVC_ATTR_PROTOCOL"))


def answers(lab, src, ip, port, n):
    return [lab.request(src, ip, port, timeout=5).pod for _ in range(n)]


def test_cluster_ip_round_robins_across_pods_and_keeps_the_pod_source(env):
    lab, dp = env
    dp.apply([service({"app": "web"})])
    seen = answers(lab, "client", CLUSTER_IP, 80, 9)
    assert collections.Counter(seen) == {"web-1": 3, "web-2": 3, "web-3": 3}, f"rr spreads evenly: {seen}"
    assert len(set(seen[:3])) == 3, "round robin: three requests, three pods"
    assert lab.request("client", CLUSTER_IP, 80).client == lab.pods["client"].ip
    table = ipvs_table(lab)
    assert set(table[f"{CLUSTER_IP}:80"]) == {f"{lab.pods[p].ip}:80" for p in ("web-1", "web-2", "web-3")}


def test_node_port_from_outside_is_masqueraded(env):
    lab, dp = env
    dp.apply([service({"app": "web"}, node_port=30080)])
    node1 = str(lab.spec.node("n1").ip)
    replies = [lab.request("ext", node1, 30080, timeout=5) for _ in range(6)]
    assert {r.pod for r in replies} == {"web-1", "web-2", "web-3"}
    remote = [r for r in replies if r.pod != "web-1"]
    assert all(r.client == node1 for r in remote), "eTP=Cluster: SNAT to the node for remote pods"


def test_external_traffic_policy_local_keeps_the_client_and_drops_without_local_pods(env):
    lab, dp = env
    client_ip = str(lab.spec.external_ip)
    dp.apply([service({"tier": "a"}, node_port=30081, externalTrafficPolicy="Local")])
    for node, pod in (("n1", "web-1"), ("n2", "web-2")):
        for _ in range(3):
            reply = lab.request("external", str(lab.spec.node(node).ip), 30081, timeout=5)
            assert (reply.pod, reply.client) == (pod, client_ip), "only the local pod, seeing the client's address"
    dp.apply([service({"side": "two"}, node_port=30081, externalTrafficPolicy="Local")])  # pods on n2 only
    node1 = str(lab.spec.node("n1").ip)
    with pytest.raises(TimeoutError):
        lab.request("external", node1, 30081, timeout=1)  # n1 has no local endpoint: dropped
    assert lab.request("client", node1, 30081, timeout=5).pod in ("web-2", "web-3"), "pods on n1 still get through"


def test_no_endpoints_is_refused(env):
    lab, dp = env
    dp.apply([service({"app": "nobody"})])
    start = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        lab.request("client", CLUSTER_IP, 80, timeout=5)
    assert time.monotonic() - start < 2, "refused at once, not a timeout"


def test_client_ip_affinity_sticks_to_one_pod(env):
    lab, dp = env
    dp.apply([service({"app": "web"}, sessionAffinity="ClientIP",
                      sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}})])
    seen = set(answers(lab, "client", CLUSTER_IP, 80, 8))
    assert len(seen) == 1, f"every connection from one client reaches the same pod: {seen}"


def test_graceful_termination_keeps_an_established_connection(env):
    lab, dp = env
    dp.apply([service({"app": "web"})])
    with netns.entered(lab.pods["client"].netns):
        held = socket.create_connection((CLUSTER_IP, 80), timeout=5)
    held_file = held.makefile("rwb")
    first = held_file.readline()
    pod = next(p for p in ("web-1", "web-2", "web-3") if f'"{p}"'.encode() in first)
    others = {"web-1", "web-2", "web-3"} - {pod}
    # the held pod leaves the service: its real server is quiesced, not deleted
    dp.apply([service({"app": "web"})], conditions={pod: {"ready": False, "serving": False, "terminating": True}})
    table = ipvs_table(lab)[f"{CLUSTER_IP}:80"]
    assert table[f"{lab.pods[pod].ip}:80"][0] == 0, "weight 0 while its connection lives"
    held_file.write(b"still there?\n")
    held_file.flush()
    assert f'"{pod}"'.encode() in held_file.readline(), "the established connection still reaches its pod"
    assert set(answers(lab, "client", CLUSTER_IP, 80, 6)) == others, "new connections avoid the leaving pod"
    held.close()


def test_udp_real_servers_go_at_once(env):
    lab, dp = env
    udp = service({"app": "web"})
    udp["spec"]["ports"][0]["protocol"] = "UDP"
    dp.apply([udp])
    assert {lab.request("client", CLUSTER_IP, 80, "udp", timeout=5).pod for _ in range(6)} == {"web-1", "web-2", "web-3"}
    udp["spec"]["selector"] = {"tier": "a"}
    dp.apply([udp])
    assert set(ipvs_table(lab)[f"{CLUSTER_IP}:80"]) == {f"{lab.pods[p].ip}:80" for p in ("web-1", "web-2")}, \
        "no quiescing for UDP: web-3's real server is deleted at once"


def test_reconcile_changes_one_real_server_and_leaves_the_others(env):
    lab, dp = env
    dp.apply([service({"app": "web"})])
    answers(lab, "client", CLUSTER_IP, 80, 6)
    before = settled_ipvs_table(lab)[f"{CLUSTER_IP}:80"]
    dp.apply([service({"tier": "a"})])  # web-3 leaves, web-1 and web-2 stay
    after = settled_ipvs_table(lab)[f"{CLUSTER_IP}:80"]
    for pod in ("web-1", "web-2"):
        rs = f"{lab.pods[pod].ip}:80"
        assert before[rs][1] > 0, f"{pod} was scheduled connections before the change"
        assert after[rs] == before[rs], f"{pod}'s real server is untouched (its counters are kept)"
    assert set(answers(lab, "client", CLUSTER_IP, 80, 4)) == {"web-1", "web-2"}


def test_dump_prints_the_table_as_ipvsadm_save_does(env):
    lab, dp = env
    dp.apply([service({"app": "web"})])
    saved = subprocess.run(["ip", "netns", "exec", lab.node_ns("n1"), "ipvsadm-save", "-n"], capture_output=True,
                           text=True).stdout.splitlines()
    ruleset = dp.proxiers["n1"].backends[4].last_ruleset
    ours = [line for line in ruleset.text().splitlines() if line.startswith(("-A -t ", "-a -t "))]
    assert sorted(ours) == sorted(line.strip() for line in saved if line.startswith(("-A -t ", "-a -t ")))


def test_cli_run_diff_and_cleanup():
    """`pyproxy run --once`, `diff` and `cleanup` with --backend ipvs, in a namespace of their own."""
    import os
    import sys
    import uuid

    golden = os.path.join(os.path.dirname(__file__), "..", "..", "unit", "golden", "kube_proxy_overall.yaml")
    pyproxy = os.path.join(os.path.dirname(sys.executable), "pyproxy")
    ns = f"pxt-{uuid.uuid4().hex[:6]}-ipvs"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)

        def cli(*args):
            return subprocess.run(["ip", "netns", "exec", ns, pyproxy, *args, "-f", golden, "--node", "test-node",
                                   "--cluster-cidr", "10.0.0.0/8", "--backend", "ipvs"], capture_output=True, text=True)

        out = cli("run", "--once")
        assert out.returncode == 0, out.stderr
        same = cli("diff")
        assert (same.returncode, same.stdout.strip()) == (0, "no differences (ipvs)"), same.stdout + same.stderr
        subprocess.run(["ip", "netns", "exec", ns, "ipvsadm", "-d", "-t", "172.30.0.44:80", "-r", "10.180.0.5:80"],
                       check=True)
        changed = cli("diff")
        assert changed.returncode == 1 and "-a -t 172.30.0.44:80 -r 10.180.0.5:80 -m -w 1" in changed.stdout
        done = subprocess.run(["ip", "netns", "exec", ns, pyproxy, "cleanup"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        left = subprocess.run(["ip", "netns", "exec", ns, "ipvsadm-save", "-n"], capture_output=True, text=True).stdout
        sets = subprocess.run(["ip", "netns", "exec", ns, "ipset", "list", "-n"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-n", ns, "link"], capture_output=True, text=True).stdout
        assert (left.strip(), sets.strip(), "kube-ipvs0" in links) == ("", "", False)
    finally:
        subprocess.run(["ip", "netns", "del", ns])


def test_switching_between_ipvs_and_iptables_leaves_nothing_behind(env):
    """Unlike iptables <-> nftables, an established connection does not survive leaving IPVS
    mode (IPVS, not conntrack's NAT, carried it; kube-proxy behaves the same)."""
    lab, dp = env
    dp.apply([service({"app": "web"})])

    def node_state():
        def run(*cmd):
            return subprocess.run(["ip", "netns", "exec", lab.node_ns("n1"), *cmd], capture_output=True, text=True).stdout
        return run("ipvsadm-save", "-n"), run("ipset", "list", "-n"), run("iptables-save") + run("iptables-legacy-save")

    cidr = (lab.spec.cluster_cidr,)
    for mode in ("iptables", "ipvs"):
        LabDataplane(lab, ProxyConfig(mode=mode, cluster_cidrs=cidr)).apply([service({"app": "web"})])
        table, sets, rules = node_state()
        if mode == "iptables":
            assert (table.strip(), sets.strip()) == ("", ""), "no virtual server or ipset left behind"
            assert "KUBE-IPVS-FILTER" not in rules and "kube-ipvs0" not in subprocess.run(
                ["ip", "-n", lab.node_ns("n1"), "link"], capture_output=True, text=True).stdout
        else:
            assert not any(c in rules for c in ("KUBE-SVC-", "KUBE-NODEPORTS", "KUBE-PROXY-CANARY")), \
                "no iptables-mode chain left behind"
        assert lab.request("client", CLUSTER_IP, 80, timeout=5).pod in ("web-1", "web-2", "web-3")


def test_foreign_virtual_servers_ipsets_and_rules_survive_full_and_partial_syncs(env):
    """A good neighbour in IPVS mode: another program adds and removes virtual servers of its own
    in a tight loop, and keeps one with a real server, an ipset and a counting iptables rule, while
    pyproxy runs full (every third) and partial syncs. At the end every foreign virtual server is
    there as the program left it, once; its ipset and its rule are there; the counter never went down."""
    lab, dp = env
    ns = lab.node_ns("n1")

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True)

    run("ipvsadm", "-A", "-t", "192.0.2.1:7000", "-s", "wrr").check_returncode()
    run("ipvsadm", "-a", "-t", "192.0.2.1:7000", "-r", "192.0.2.200:7000", "-m", "-w", "3").check_returncode()
    run("ipset", "create", "FOREIGN-SET", "hash:ip").check_returncode()
    run("ipset", "add", "FOREIGN-SET", "192.0.2.9").check_returncode()
    run("iptables", "-w", "-A", "OUTPUT", "-o", "lo", "-p", "udp", "--dport", "9", "-m", "comment", "--comment",
        "FOREIGN-COUNT", "-j", "ACCEPT").check_returncode()
    expected: set[str] = {"192.0.2.1:7000"}
    stop = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            vs = f"192.0.2.{i % 100 + 10}:{8000 + i}"
            proc = run("ipvsadm", "-A", "-t", vs, "-s", "rr")
            if proc.returncode:
                errors.append(proc.stderr)
            else:
                expected.add(vs)
            if i % 3 == 2:  # and take one away again
                old = f"192.0.2.{(i - 1) % 100 + 10}:{8000 + i - 1}"
                if old in expected and run("ipvsadm", "-D", "-t", old).returncode == 0:
                    expected.discard(old)
            i += 1
            stop.wait(0.02)

    def counted() -> int:
        for line in run("iptables", "-w", "-L", "OUTPUT", "-v", "-x", "-n").stdout.splitlines():
            if "FOREIGN-COUNT" in line:
                return int(line.split()[0])
        raise AssertionError("the foreign counting rule is gone")

    thread = threading.Thread(target=writer)
    thread.start()
    last, syncs = 0, 0
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            selector = {"app": "web"} if syncs % 2 else {"tier": "a"}
            dp.apply([service(selector, node_port=30080)], full=syncs % 3 == 0)
            with netns.entered(ns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"x", ("127.0.0.1", 9))
            now = counted()
            assert now >= last, f"a foreign counter went down: {last} -> {now}"
            last, syncs = now, syncs + 1
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[:3]
    foreign = [line.split()[2] for line in run("ipvsadm", "-S", "-n").stdout.splitlines()
               if line.startswith("-A") and "192.0.2." in line]
    assert sorted(foreign) == sorted(expected), (
        f"lost: {sorted(expected - set(foreign))[:10]}, unexpected: {sorted(set(foreign) - expected)[:10]}")
    assert len(foreign) == len(set(foreign)), "no foreign virtual server duplicated"
    assert "-a -t 192.0.2.1:7000 -r 192.0.2.200:7000 -m -w 3" in run("ipvsadm", "-S", "-n").stdout
    assert "192.0.2.9" in run("ipset", "list", "FOREIGN-SET").stdout
    assert last >= syncs > 10
    # and ours are there: the ClusterIP's virtual server; pyproxy's cleanup takes only ours
    assert f"{CLUSTER_IP}:80" in ipvs_table(lab)
    dp.cleanup()
    left = ipvs_table(lab)
    assert f"{CLUSTER_IP}:80" not in left and "192.0.2.1:7000" in left, left
    run("ipvsadm", "-D", "-t", "192.0.2.1:7000")
    for vs in expected - {"192.0.2.1:7000"}:
        run("ipvsadm", "-D", "-t", vs)
    run("iptables", "-w", "-D", "OUTPUT", "-o", "lo", "-p", "udp", "--dport", "9", "-m", "comment", "--comment",
        "FOREIGN-COUNT", "-j", "ACCEPT")
    run("ipset", "destroy", "FOREIGN-SET")

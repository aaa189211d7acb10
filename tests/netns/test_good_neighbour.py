"""Other programs' rules survive pyproxy's syncs (the node-safety issue): a foreign writer adds
and removes rules and chains in filter, nat and mangle in a tight loop while pyproxy runs full
and partial syncs; at the end every foreign rule is there once, and a foreign rule's packet
counter never went down."""

from __future__ import annotations

import ipaddress
import re
import socket
import subprocess
import threading
import time

import pytest

from pyproxy import netns
from pyproxy.config import ProxyConfig
from pyproxy.iptables.apply import IptablesBackend
from pyproxy.model import parse_objects
from pyproxy.proxier import Proxier

SERVICES = 200


def cluster(generation: int):
    objs = []
    for i in range(SERVICES):
        objs.append({"kind": "Service", "metadata": {"namespace": "ns", "name": f"s{i}"},
                     "spec": {"clusterIP": f"10.96.{i // 250}.{i % 250 + 1}", "ports": [{"port": 80}]}})
        objs.append({"kind": "EndpointSlice", "addressType": "IPv4",
                     "metadata": {"namespace": "ns", "name": f"s{i}-a", "labels": {"kubernetes.io/service-name": f"s{i}"}},
                     "endpoints": [{"addresses": [f"10.244.{(i + generation) % 200}.{j + 1}"]} for j in range(3)],
                     "ports": [{"name": "", "port": 8080}]})
    return parse_objects(objs)


def counter(ns: str, variant: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, f"iptables-{variant}", "-w", "-t", "filter", "-L", "OUTPUT",
                          "-v", "-x", "-n"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "FOREIGN-COUNT" in line:
            return int(line.split()[0])
    raise AssertionError(f"the counting rule is gone:\n{out}")


def foreign_rules(ns: str, variant: str) -> list[str]:
    save = subprocess.run(["ip", "netns", "exec", ns, f"iptables-{variant}-save"], capture_output=True, text=True).stdout
    return [line for line in save.splitlines() if "foreign-" in line]


def sync_while_it_writes(ns: str, proxier: Proxier, writer, stop: threading.Event, count, seconds: float
                         ) -> tuple[int, int]:
    """Partial syncs, full ones (every third) and restarts (every fifth: a new Proxier that
    remembers nothing, the cold start) while `writer` runs in a thread, a packet for the foreign
    counter after each; the counter (read by `count`) never goes down. Returns (last count,
    syncs + 1)."""
    thread = threading.Thread(target=writer)
    thread.start()
    last, generation = 0, 1
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with netns.entered(ns):
                if generation % 5 == 0:
                    proxier = Proxier(proxier.node_name, proxier.config, tuple(proxier.backends))
                proxier.sync(cluster(generation), full=generation % 3 == 0)
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.sendto(b"x", ("127.0.0.1", 9))  # counted by the foreign rule
            now = count()
            assert now >= last, f"a foreign counter went down: {last} -> {now}"
            last = now
            generation += 1
    finally:
        stop.set()
        thread.join()
    return last, generation


@pytest.mark.parametrize("variant", ["nft", "legacy"])
def test_foreign_rules_added_during_full_and_partial_syncs_survive(namespaces, variant, monkeypatch):
    # 200 services' 800 chains in transactions of 50, as 10,000 services' go in transactions of 2,000
    monkeypatch.setattr(IptablesBackend, "NOFLUSH_BATCH_CHAINS", 50)
    ns = namespaces.new("neigh")
    tool = ["ip", "netns", "exec", ns, f"iptables-{variant}", "-w"]
    subprocess.run([*tool, "-A", "OUTPUT", "-o", "lo", "-p", "udp", "--dport", "9", "-m", "comment", "--comment",
                    "FOREIGN-COUNT", "-j", "ACCEPT"], check=True)
    config = ProxyConfig(cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),), iptables_variant=variant)
    with netns.entered(ns):
        proxier = Proxier("n1", config, (4,))
        proxier.sync(cluster(0), full=True)  # the cold start
    expected: dict[str, str] = {}  # comment -> table
    stop = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            table = ("filter", "nat", "mangle")[i % 3]
            chain = {"filter": "INPUT", "nat": "POSTROUTING", "mangle": "PREROUTING"}[table]
            tag = f"foreign-{i}"
            proc = subprocess.run([*tool, "-t", table, "-A", chain, "-s", f"192.0.2.{i % 250 + 1}", "-m", "comment",
                                   "--comment", tag, "-j", "RETURN"], capture_output=True, text=True)
            if proc.returncode:
                errors.append(proc.stderr)
            else:
                expected[tag] = table
            if i % 4 == 3:  # and take one away again
                old = f"foreign-{i - 2}"
                if old in expected:
                    t = expected.pop(old)
                    c = {"filter": "INPUT", "nat": "POSTROUTING", "mangle": "PREROUTING"}[t]
                    subprocess.run([*tool, "-t", t, "-D", c, "-s", f"192.0.2.{(i - 2) % 250 + 1}", "-m", "comment",
                                    "--comment", old, "-j", "RETURN"], capture_output=True)
            if i % 10 == 0:  # a foreign chain too
                subprocess.run([*tool, "-t", table, "-N", f"FOREIGN-{i}"], capture_output=True)
            i += 1
            # a busy neighbour, ~50 writes a second, not a livelock: with iptables-nft every foreign
            # write bumps the ruleset generation, and a restore that loses the race retries
            stop.wait(0.02)

    last_count, generation = sync_while_it_writes(ns, proxier, writer, stop, lambda: counter(ns, variant), 20)
    assert not errors, errors[:3]
    present = foreign_rules(ns, variant)
    tags = [re.search(r"foreign-\d+", line).group(0) for line in present]
    assert sorted(tags) == sorted(expected), (
        f"lost: {sorted(set(expected) - set(tags))[:10]}, unexpected: {sorted(set(tags) - set(expected))[:10]}")
    assert len(tags) == len(set(tags)), "no foreign rule duplicated"
    assert last_count > 0 and generation > 10


def nft(ns: str, *args: str, script: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *args], input=script, capture_output=True, text=True)


def test_nftables_mode_touches_only_its_own_table(namespaces):
    """nftables mode: another program's table (rules and chains added and removed in a tight
    loop, a counter on loopback traffic) survives pyproxy's full syncs (our table replaced whole)
    and partial ones: every rule present once at the end, the counter never goes down."""
    ns = namespaces.new("nftneigh")
    nft(ns, "-f", "-", script="table inet foreign {\n chain out { type filter hook output priority 10; "
                              "udp dport 9 counter comment \"FOREIGN-COUNT\"; }\n}\n").check_returncode()
    config = ProxyConfig(mode="nftables", cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),))
    with netns.entered(ns):
        proxier = Proxier("n1", config, (4,))
        proxier.sync(cluster(0), full=True)
    expected: set[str] = set()
    stop = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            tag = f"foreign-{i}"
            proc = nft(ns, "add", "rule", "inet", "foreign", "out", "ip", "daddr", f"192.0.2.{i % 250 + 1}",
                       "accept", "comment", f'"{tag}"')
            if proc.returncode:
                errors.append(proc.stderr)
            else:
                expected.add(tag)
            if i % 4 == 3:  # and take one away again, by its handle
                old = f"foreign-{i - 2}"
                listed = nft(ns, "-a", "list", "chain", "inet", "foreign", "out").stdout
                handle = re.search(rf'comment "{old}".*# handle (\d+)', listed)
                if handle and nft(ns, "delete", "rule", "inet", "foreign", "out", "handle", handle.group(1)).returncode == 0:
                    expected.discard(old)
            if i % 10 == 0:
                nft(ns, "add", "chain", "inet", "foreign", f"c{i}")
            i += 1

    def count() -> int:
        listed = nft(ns, "list", "chain", "inet", "foreign", "out").stdout
        found = re.search(r"counter packets (\d+) bytes \d+ comment \"FOREIGN-COUNT\"", listed)
        assert found, f"the counting rule is gone:\n{listed}"
        return int(found.group(1))

    last, generation = sync_while_it_writes(ns, proxier, writer, stop, count, 15)
    assert not errors, errors[:3]
    tags = re.findall(r'comment "(foreign-\d+)"', nft(ns, "list", "table", "inet", "foreign").stdout)
    assert sorted(tags) == sorted(expected) and len(tags) == len(set(tags)), (
        f"lost: {sorted(expected - set(tags))[:10]}, unexpected: {sorted(set(tags) - expected)[:10]}")
    assert last > 0 and generation > 10
    assert "table ip kube-proxy" in nft(ns, "list", "tables").stdout, "and ours is there too"

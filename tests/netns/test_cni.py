"""pyproxy-bridge against the real kernel, exec'd as a runtime would, in namespaces made here.

The "host" side of every invocation is a namespace the test created, never the root one.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import os
import time

import pytest

from .cni_helpers import OURS, REFERENCE_DIR, addresses, allocated, bridge_conf, invoke, ip_json, links, routes

REFERENCE_BRIDGE = os.path.join(REFERENCE_DIR, "bridge")
REFERENCE_HOST_LOCAL = os.path.join(REFERENCE_DIR, "host-local")


@pytest.fixture
def host(namespaces):
    return namespaces.new("host")


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "ipam")


def veths_on_bridge(ns: str) -> list[dict]:
    return [link for link in links(ns) if link.get("master") == "cni0"]


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_add_check_del_in_every_version(version, namespaces, host, data_dir):
    pod = namespaces.new("pod")
    conf = bridge_conf(data_dir, version)

    code, result = invoke(OURS, "ADD", conf, host, pod_ns=pod)
    assert code == 0, result
    assert result["cniVersion"] == version
    (ip,) = result["ips"]
    # 0.3.x/0.4.0 results tag IPs with their version; 1.x results must not.
    assert ("version" in ip) == version.startswith("0.")
    assert ip["address"] == "10.22.0.2/24" and ip["gateway"] == "10.22.0.1" and ip["interface"] == 2
    assert [i["name"] for i in result["interfaces"]][::2] == ["cni0", "eth0"]
    assert result["interfaces"][2]["sandbox"] == f"/run/netns/{pod}"

    assert addresses(pod, "eth0") == ["10.22.0.2/24"]
    assert ("default", "10.22.0.1") in routes(pod)
    assert ("10.22.0.0/16", "10.22.0.1") in routes(pod)
    (port,) = veths_on_bridge(host)
    assert port["ifname"] == result["interfaces"][1]["name"]
    assert port["linkinfo"]["info_slave_data"]["hairpin"] is True
    assert addresses(host, "cni0") == ["10.22.0.1/24"]

    check_conf = {**conf, "prevResult": result}
    code, out = invoke(OURS, "CHECK", check_conf, host, pod_ns=pod)
    if version == "0.3.1":
        assert (code, out["code"]) == (1, 1), "CHECK does not exist before 0.4.0"
    else:
        assert (code, out) == (0, None)

    assert invoke(OURS, "DEL", conf, host, pod_ns=pod) == (0, None)
    assert allocated(data_dir) == []
    assert veths_on_bridge(host) == []
    assert [link["ifname"] for link in links(pod)] == ["lo"]
    assert invoke(OURS, "DEL", conf, host, pod_ns=pod) == (0, None), "a second DEL must succeed"


def test_check_notices_a_missing_address(namespaces, host, data_dir):
    pod = namespaces.new("pod")
    conf = bridge_conf(data_dir)
    _, result = invoke(OURS, "ADD", conf, host, pod_ns=pod)
    os.system(f"ip -n {pod} addr flush dev eth0")
    code, out = invoke(OURS, "CHECK", {**conf, "prevResult": result}, host, pod_ns=pod)
    assert code == 1 and "10.22.0.2/24" in out["msg"]


def test_del_after_the_netns_is_gone_frees_the_address(namespaces, host, data_dir):
    pod = namespaces.new("pod")
    conf = bridge_conf(data_dir, ipMasq=True)
    assert invoke(OURS, "ADD", conf, host, pod_ns=pod)[0] == 0
    assert allocated(data_dir) == ["10.22.0.2"]
    path_gone = f"/run/netns/{pod}"
    namespaces.delete(pod)
    code, out = invoke(OURS, "DEL", conf, host, env={"CNI_NETNS": path_gone})
    assert (code, out) == (0, None)
    assert allocated(data_dir) == []
    deadline = time.monotonic() + 5  # the kernel tears a deleted namespace down in a worker, a moment later
    while veths_on_bridge(host) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert veths_on_bridge(host) == [], "the kernel removes the pair with the namespace"
    nat = os.popen(f"ip netns exec {host} iptables-save -t nat").read()
    assert "CNI-" not in nat, "DEL removes the masquerade chain even without the netns"
    # containerd sends DEL with an empty CNI_NETNS
    assert invoke(OURS, "DEL", conf, host, env={"CNI_NETNS": ""}) == (0, None)


def test_ip_masq_masquerades_traffic_leaving_the_pod_subnet(namespaces, host, data_dir):
    pod = namespaces.new("pod")
    conf = bridge_conf(data_dir, ipMasq=True)
    assert invoke(OURS, "ADD", conf, host, pod_ns=pod)[0] == 0
    nat = os.popen(f"ip netns exec {host} iptables-save -t nat").read()
    assert "-A POSTROUTING -s 10.22.0.2/32" in nat and "MASQUERADE" in nat
    assert invoke(OURS, "DEL", conf, host, pod_ns=pod)[0] == 0
    assert "CNI-" not in os.popen(f"ip netns exec {host} iptables-save -t nat").read()


def test_address_allocated_by_ours_is_released_by_reference_host_local(namespaces, host, data_dir):
    pod = namespaces.new("pod")
    conf = bridge_conf(data_dir)
    assert invoke(OURS, "ADD", conf, host, pod_ns=pod)[0] == 0
    assert allocated(data_dir) == ["10.22.0.2"]
    ipam_conf = {**conf, "type": "host-local"}
    assert invoke(REFERENCE_HOST_LOCAL, "DEL", ipam_conf, host, pod_ns=pod)[0] == 0
    assert allocated(data_dir) == []


def test_address_allocated_by_reference_is_released_by_ours_and_not_reused(namespaces, host, data_dir):
    pod = namespaces.new("pod")
    conf = bridge_conf(data_dir)
    code, ref = invoke(REFERENCE_HOST_LOCAL, "ADD", {**conf, "type": "host-local"}, host,
                       container_id="refctr", pod_ns=pod)
    assert code == 0 and ref["ips"][0]["address"] == "10.22.0.2/24"
    # ours continues after the reference's last_reserved_ip, then releases the reference's file
    _, ours = invoke(OURS, "ADD", conf, host, pod_ns=pod)
    assert ours["ips"][0]["address"] == "10.22.0.3/24"
    assert invoke(OURS, "DEL", conf, host, container_id="refctr", pod_ns=namespaces.new("other")) == (0, None)
    assert allocated(data_dir) == ["10.22.0.3"]


def _state(host: str, pod: str) -> dict:
    bridge_ports = [(p["linkinfo"]["info_slave_data"]["hairpin"], p["mtu"]) for p in veths_on_bridge(host)]
    (eth0,) = [link for link in links(pod) if link["ifname"] == "eth0"]
    return {"pod_addrs": addresses(pod, "eth0"), "pod_routes": routes(pod), "pod_mtu": eth0["mtu"],
            "bridge_addrs": addresses(host, "cni0"), "bridge_ports": bridge_ports,
            "host_routes": routes(host)}


def test_same_state_as_the_reference_bridge(namespaces, tmp_path):
    conf_ref = bridge_conf(str(tmp_path / "ref"), mtu=1400)
    conf_ours = bridge_conf(str(tmp_path / "ours"), mtu=1400)
    ref_host, ref_pod = namespaces.new("rhost"), namespaces.new("rpod")
    our_host, our_pod = namespaces.new("ohost"), namespaces.new("opod")
    code, ref = invoke(REFERENCE_BRIDGE, "ADD", conf_ref, ref_host, pod_ns=ref_pod)
    assert code == 0, ref
    code, ours = invoke(OURS, "ADD", conf_ours, our_host, pod_ns=our_pod)
    assert code == 0, ours
    assert _state(our_host, our_pod) == _state(ref_host, ref_pod)
    for key in ("ips", "routes", "dns"):
        assert ours[key] == ref[key]
    assert [(i["name"], "sandbox" in i) for i in ours["interfaces"]][::2] == \
           [(i["name"], "sandbox" in i) for i in ref["interfaces"]][::2]


def test_fifty_concurrent_adds_get_fifty_distinct_addresses(namespaces, host, data_dir):
    pods = [namespaces.new(f"p{i}") for i in range(50)]
    conf = bridge_conf(data_dir)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: invoke(OURS, "ADD", conf, host, container_id=f"c{i}", pod_ns=pods[i]),
                                range(50)))
    assert all(code == 0 for code, _ in results), [r for r in results if r[0]]
    ips = {r["ips"][0]["address"] for _, r in results}
    assert len(ips) == 50
    assert len(allocated(data_dir)) == 50
    assert len(veths_on_bridge(host)) == 50


def test_exhausted_range_allocates_nothing(namespaces, host, data_dir):
    conf = bridge_conf(data_dir)
    conf["ipam"]["ranges"] = [[{"subnet": "10.22.0.0/24", "rangeStart": "10.22.0.10", "rangeEnd": "10.22.0.11"}]]
    for i in range(2):
        assert invoke(OURS, "ADD", conf, host, container_id=f"c{i}", pod_ns=namespaces.new(f"p{i}"))[0] == 0
    before = links(host)
    last = namespaces.new("last")
    code, out = invoke(OURS, "ADD", conf, host, container_id="c9", pod_ns=last)
    assert code == 1 and out["code"] == 999 and "no IP addresses available" in out["msg"]
    assert allocated(data_dir) == ["10.22.0.10", "10.22.0.11"]
    assert len(links(host)) == len(before)
    assert [link["ifname"] for link in links(last)] == ["lo"]
    status_conf = {**conf, "cniVersion": "1.1.0"}
    code, out = invoke(OURS, "STATUS", status_conf, host)
    assert (code, out["code"]) == (1, 50), "STATUS reports that no pod can be added"


def test_gc_frees_every_attachment_the_runtime_no_longer_knows(namespaces, host, data_dir):
    conf = bridge_conf(data_dir, "1.1.0")
    for i in range(3):
        assert invoke(OURS, "ADD", conf, host, container_id=f"c{i}", pod_ns=namespaces.new(f"p{i}"))[0] == 0
    gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}
    assert invoke(OURS, "GC", gc, host) == (0, None)
    assert allocated(data_dir) == ["10.22.0.3"]
    assert invoke(OURS, "STATUS", conf, host) == (0, None)


def test_version_lists_supported_versions(host):
    code, out = invoke(OURS, "VERSION", {"cniVersion": "1.0.0"}, host)
    assert code == 0 and out["cniVersion"] == "1.0.0"
    assert {"0.3.1", "0.4.0", "1.0.0", "1.1.0"} <= set(out["supportedVersions"])


def test_other_ipam_types_are_delegated_through_cni_path(namespaces, host):
    pod = namespaces.new("pod")
    conf = bridge_conf("/nonexistent")
    conf["ipam"] = {"type": "static", "addresses": [{"address": "10.33.0.7/24", "gateway": "10.33.0.1"}]}
    code, out = invoke(OURS, "ADD", conf, host, pod_ns=pod)
    assert code == 0, out
    assert addresses(pod, "eth0") == ["10.33.0.7/24"]
    assert invoke(OURS, "DEL", conf, host, pod_ns=pod) == (0, None)


BAD_INPUT = [
    ("missing CNI_CONTAINERID", {"env": {"CNI_CONTAINERID": ""}}, 4),
    ("missing CNI_COMMAND", {"env": {"CNI_COMMAND": ""}}, 4),
    ("malformed JSON", {"raw": b'{"cniVersion": "1.0.0", '}, 6),
    ("unknown cniVersion", {"conf": {"cniVersion": "9.9.9"}}, 1),
    ("subnet with host bits", {"subnet": "10.22.0.5/24"}, 7),
    ("ifname longer than 15", {"ifname": "a-very-long-ifname"}, 4),
    ("existing ifname", {"ifname": "lo"}, 999),
    ("netns that does not exist", {"env": {"CNI_NETNS": "/run/netns/pxt-missing"}}, 3),
    ("unknown CNI_ARGS", {"env": {"CNI_ARGS": "FOO=bar"}}, 4),
]


@pytest.mark.parametrize("case, change, code", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gets_its_error_code_and_creates_nothing(case, change, code, namespaces, host, data_dir):
    pod = namespaces.new("pod")
    conf = bridge_conf(data_dir, subnet=change.get("subnet", "10.22.0.0/24"))
    conf.update(change.get("conf", {}))
    stdin = change.get("raw", conf)
    host_links, pod_links = links(host), links(pod)
    rc, out = invoke(OURS, "ADD", stdin, host, pod_ns=pod, ifname=change.get("ifname", "eth0"),
                     env=change.get("env"))
    assert rc != 0
    assert out["code"] == code, out
    assert out["msg"]
    assert links(host) == host_links and links(pod) == pod_links
    assert allocated(data_dir) == []


def test_ipv6_and_dual_stack(namespaces, host, data_dir):
    pod = namespaces.new("pod")
    conf = bridge_conf(data_dir)
    conf["ipam"]["ranges"] = [[{"subnet": "10.22.0.0/24"}], [{"subnet": "fd00:22::/64"}]]
    conf["ipam"]["routes"] = []
    code, out = invoke(OURS, "ADD", conf, host, pod_ns=pod)
    assert code == 0, out
    assert [ip["address"] for ip in out["ips"]] == ["10.22.0.2/24", "fd00:22::2/64"]
    assert set(addresses(pod, "eth0")) == {"10.22.0.2/24", "fd00:22::2/64"}
    assert ("default", "fd00:22::1") in [(r["dst"], r.get("gateway")) for r in ip_json(pod, "-6", "route")]
    assert str(ipaddress.ip_address("fd00:22::2")) in allocated(data_dir)

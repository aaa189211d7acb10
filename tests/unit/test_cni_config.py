"""CNI invocation parsing and host-local allocation, without root or namespaces."""

import ipaddress

import pytest

from pyproxy.cni import ipam
from pyproxy.cni.config import parse_bridge_conf, parse_env
from pyproxy.cni.errors import CniError
from pyproxy.cni.plugin import run


def conf(**ipam_conf):
    return {"cniVersion": "1.0.0", "name": "net", "type": "pyproxy-bridge",
            "ipam": {"type": "host-local", **ipam_conf}}


@pytest.mark.parametrize("environ, message", [
    ({}, "CNI_COMMAND missing"),
    ({"CNI_COMMAND": "ADD", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0"}, "CNI_CONTAINERID missing"),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0", "CNI_NETNS": ""}, "CNI_NETNS missing"),
    ({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0/1"}, "invalid character"),
    ({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "-bad", "CNI_IFNAME": "eth0"}, "container id"),
    ({"CNI_COMMAND": "FROB"}, "unknown CNI_COMMAND"),
])
def test_bad_environment_is_code_4(environ, message):
    with pytest.raises(CniError) as err:
        parse_env(environ)
    assert err.value.code == 4 and message in err.value.msg


def test_cni_args_need_ignore_unknown_for_unknown_keys():
    base = {"CNI_COMMAND": "VERSION"}
    assert parse_env({**base, "CNI_ARGS": "IgnoreUnknown=1;FOO=bar"}).args["FOO"] == "bar"
    assert parse_env({**base, "CNI_ARGS": "K8S_POD_NAME=x"}).args == {"K8S_POD_NAME": "x"}
    with pytest.raises(CniError):
        parse_env({**base, "CNI_ARGS": "FOO=bar"})


def test_defaults_follow_the_reference_plugins():
    c = parse_bridge_conf(conf(subnet="10.1.2.0/24"))
    assert (c.bridge, c.is_gateway, c.hairpin_mode, c.mtu) == ("cni0", False, False, 0)
    (rs,) = c.host_local.ranges
    (r,) = rs
    assert (str(r.start), str(r.end), str(r.gateway)) == ("10.1.2.1", "10.1.2.254", "10.1.2.1")
    assert c.host_local.data_dir == "/var/lib/cni/networks/net"
    assert parse_bridge_conf({**conf(subnet="10.1.2.0/24"), "isDefaultGateway": True}).is_gateway


@pytest.mark.parametrize("ipam_conf, message", [
    ({"subnet": "10.1.2.3/24"}, "has host bits set; the network is 10.1.2.0/24"),
    ({"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.2.0.1"}]]}, "rangeStart: 10.2.0.1 is not in"),
    ({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "fd00::/64"}]]}, "mixes IPv4 and IPv6"),
    ({"ranges": []}, "non-empty"),
    ({}, "needs ranges or subnet"),
    ({"subnet": "10.1.0.0/24", "routes": [{"gw": "10.1.0.1"}]}, "routes[0]: a route needs dst"),
])
def test_bad_ipam_is_code_7_with_the_field(ipam_conf, message):
    with pytest.raises(CniError) as err:
        parse_bridge_conf(conf(**ipam_conf))
    assert err.value.code == 7 and message in err.value.msg


def test_mtu_must_be_a_number():
    with pytest.raises(CniError) as err:
        parse_bridge_conf({**conf(subnet="10.1.0.0/24"), "mtu": "1500"})
    assert err.value.code == 7 and "mtu" in err.value.msg


def test_gc_and_status_need_version_1_1(tmp_path):
    environ = {"CNI_COMMAND": "GC"}
    code, out = run(environ, b'{"cniVersion": "1.0.0", "name": "n", "ipam": {}}')
    assert code == 1 and out["code"] == 1


def test_allocation_skips_gateway_continues_after_last_and_wraps(tmp_path):
    c = parse_bridge_conf(conf(dataDir=str(tmp_path), ranges=[[{"subnet": "10.1.0.0/29"}]])).host_local
    got = [str(ip) for _, ip in ipam.allocate(c, "a", "eth0")]
    assert got == ["10.1.0.2"], "the gateway .1 is never handed out"
    ipam.allocate(c, "b", "eth0")  # .3
    ipam.release(c, "a", "eth0")
    assert [str(ip) for _, ip in ipam.allocate(c, "c", "eth0")] == ["10.1.0.4"], "a freed address is not reused at once"
    for name in "def":
        ipam.allocate(c, name, "eth0")  # .5 .6 then wrap to .2
    assert sorted(str(ip) for ip in ipam.Store(c.data_dir).allocations()) == \
        ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
    with pytest.raises(CniError, match="no IP addresses available"):
        ipam.allocate(c, "g", "eth0")
    assert ipam.exhausted(c)


def test_allocation_files_use_the_reference_format(tmp_path):
    c = parse_bridge_conf(conf(dataDir=str(tmp_path), subnet="10.1.0.0/24")).host_local
    ipam.allocate(c, "ctr", "eth0")
    assert (tmp_path / "net" / "10.1.0.2").read_bytes() == b"ctr\r\neth0"
    assert (tmp_path / "net" / "last_reserved_ip.0").read_text() == "10.1.0.2"
    # files written by old reference versions hold only the container ID
    (tmp_path / "net" / "10.1.0.9").write_text("old")
    assert ipam.release(c, "old", "eth0") == [ipaddress.ip_address("10.1.0.9")]


def test_a_container_gets_one_address_per_range_set_or_none(tmp_path):
    c = parse_bridge_conf(conf(dataDir=str(tmp_path), ranges=[
        [{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/120", "rangeStart": "fd00::5", "rangeEnd": "fd00::5"}]
    ])).host_local
    assert [str(ip) for _, ip in ipam.allocate(c, "a", "eth0")] == ["10.1.0.2", "fd00::5"]
    with pytest.raises(CniError):
        ipam.allocate(c, "b", "eth0")
    assert sorted(map(str, ipam.Store(c.data_dir).allocations())) == ["10.1.0.2", "fd00::5"], "no half allocation"

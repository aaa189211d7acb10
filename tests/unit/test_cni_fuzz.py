"""The CNI plugin's stdin and environment fuzzed (bad-input issue, finding 6): every invalid input
gets an error object with a spec code and one line on stderr, never a traceback or 999.

The namespace given is a plain file (setns refuses it), so no case reaches the kernel: ADD stops
at "unknown container" (3) once the configuration is valid."""

from __future__ import annotations

import contextlib
import io
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyproxy.cni import plugin
from pyproxy.cni.config import SUPPORTED_VERSIONS

SPEC_CODES = {1, 2, 3, 4, 5, 6, 7, 11, 50, 51}
BASE = {"cniVersion": "1.0.0", "name": "net", "type": "pyproxy-bridge", "bridge": "cni0", "isGateway": True,
        "mtu": 1500, "hairpinMode": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}]],
                 "routes": [{"dst": "0.0.0.0/0"}]}}
PATHS = [("cniVersion",), ("name",), ("bridge",), ("mtu",), ("isGateway",), ("ipMasq",), ("hairpinMode",), ("ipam",),
         ("ipam", "type"), ("ipam", "ranges"), ("ipam", "routes"), ("ipam", "dataDir"), ("ipam", "ranges", 0),
         ("ipam", "ranges", 0, 0), ("ipam", "ranges", 0, 0, "subnet"), ("ipam", "ranges", 0, 0, "gateway"),
         ("ipam", "ranges", 0, 0, "rangeStart"), ("ipam", "routes", 0), ("ipam", "routes", 0, "dst"),
         ("ipam", "routes", 0, "gw"), ("dns",), ("prevResult",), ("isDefaultGateway",), ("promiscMode",)]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2 ** 40, 2 ** 40), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "x", "../../escape", "a\x00b", "10.0.0.0/8", "10.0.0.300", "fd00::/64", "x" * 300, "1500",
                     "10.244.1.0/24", "0.0.0.0/0"]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.just([[{"subnet": "10.244.1.0/24"}], [{"subnet": "10.244.1.0/24"}]]))
IFNAMES = st.sampled_from(["eth0", "", "x" * 16, "é" * 8, "a/b", "a\x00b", "net1"])
COMMANDS = st.sampled_from(["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "BOGUS", ""])


def _set(conf: dict, path: tuple, value) -> None:
    cur = conf
    try:
        for key in path[:-1]:
            cur = cur[key]
        cur[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        pass


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.sampled_from(PATHS), VALUES), min_size=1, max_size=3),
       command=COMMANDS, ifname=IFNAMES, raw=st.sampled_from([None, b"[" * 100000, b"\xff", b"null", b'{"a":']),
       use_raw=st.integers(0, 19))
def test_invalid_input_gets_a_spec_code_and_no_traceback(tmp_path_factory, changes, command, ifname, raw, use_raw):
    conf = json.loads(json.dumps(BASE))
    conf["ipam"]["dataDir"] = str(tmp_path_factory.getbasetemp() / "ipam")
    for path, value in changes:
        _set(conf, path, json.loads(json.dumps(value)))
    stdin = raw if raw is not None and use_raw == 0 else json.dumps(conf).encode()
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/etc/hostname", "CNI_IFNAME": ifname,
           "CNI_PATH": "/nonexistent"}
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code, result = plugin.run(env, stdin)
    assert "Traceback" not in err.getvalue() and "internal error" not in err.getvalue(), err.getvalue()
    if code:
        assert result["code"] in SPEC_CODES, result
        assert result["cniVersion"] in SUPPORTED_VERSIONS
        assert len(err.getvalue().splitlines()) <= 1


def test_a_network_name_cannot_leave_the_data_dir(tmp_path):
    conf = json.loads(json.dumps(BASE))
    conf.update(name="../../escape")
    conf["ipam"]["dataDir"] = str(tmp_path / "ipam")
    code, result = plugin.run({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"},
                              json.dumps(conf).encode())
    assert (code, result["code"]) == (1, 7) and "not a valid network name" in result["msg"]
    assert not (tmp_path.parent / "escape").exists()


def test_two_range_sets_with_the_same_subnet_are_refused():
    conf = json.loads(json.dumps(BASE))
    conf["ipam"]["ranges"] = [[{"subnet": "10.244.1.0/24"}], [{"subnet": "10.244.1.0/25"}]]
    code, result = plugin.run({"CNI_COMMAND": "STATUS"}, json.dumps({**conf, "cniVersion": "1.1.0"}).encode())
    assert (code, result["code"]) == (1, 7) and "overlaps range set 0" in result["msg"]

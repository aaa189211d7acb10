"""Random command lines for `dump`, `trace`, `diff` and `run` (kube-proxy's flags, with
--write-config-to so that it never starts a proxy) (bad-input issue): every one ends with exit 0,
1 or 2 and at most one error line, never a traceback. In-process (click's runner), with this
thread inside a namespace made here, so `diff` reads and loads rules only there."""

from __future__ import annotations

import os

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyproxy import netns
from pyproxy.cli import main
from pyproxy.kubeproxyflags import FLAGS

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "unit", "golden", "kube_proxy_overall.yaml")

VALUES = st.one_of(
    st.sampled_from(["test-node", "n1", "4", "6", "dual", "auto", "tcp", "udp", "sctp", "json", "text", "iptables",
                     "nftables", "ipvs", "10.96.0.1", "999.1.1.1", "fd00::1", "10.0.0.0/8", "1.2.3.4/33", "0", "-1",
                     "65536", "80", "1s", "1e20", "true", "maybe", "a=b", "Foo=true", "", "é", 'evil"\n#',
                     "a" * 300, GOLDEN, "/nonexistent", "/dev/null", "/proc/self/status",
                     "\udcff", "n\udce9"]),  # bytes that are not UTF-8, as Python decodes argv
    # no NUL (execve's strings end at it) and no other surrogates: a real command line cannot
    # carry them (Python's argv decoding makes only U+DC80..U+DCFF, sampled above)
    st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=12),
    st.integers(-70000, 70000).map(str))
COMMON = ["-f", "--node", "--config", "--backend", "--family", "--cluster-cidr"]
OPTIONS = {
    "dump": COMMON + ["-o", "--output"],
    "trace": COMMON + ["--src", "--dst", "--dport", "--proto", "--in-iface", "-o"],
    "diff": COMMON + ["--iptables-variant"],
    "run": ["--node", "--hostname-override", "--proxy-mode", "--family", "--cluster-cidr", "--iptables-variant",
            "--healthz-bind-address", "--metrics-bind-address", "--v", "--proxy-name"]
           + [f"--{name}" for name in FLAGS] + ["--no-such-flag", "-x"],
}

VALID = {"dump": ["-f", GOLDEN, "--node", "test-node"], "diff": ["-f", GOLDEN, "--node", "test-node"],
         "trace": ["-f", GOLDEN, "--node", "test-node", "--src", "10.0.0.2", "--dst", "172.30.0.41", "--dport", "80"],
         "run": ["--proxy-mode", "iptables"]}


@st.composite
def command_lines(draw):
    command = draw(st.sampled_from(sorted(OPTIONS)))
    argv = [command]
    if draw(st.integers(0, 4)):  # mostly a valid line with a few options changed, so the later steps run too
        argv += VALID[command]
    for _ in range(draw(st.integers(0, 2))):
        option = draw(st.sampled_from(OPTIONS[command]))
        value = draw(VALUES)
        argv += [f"{option}={value}"] if draw(st.booleans()) else [option, value]
    if command == "run":
        argv += ["--write-config-to", "/dev/null"]
    return argv


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=command_lines())
def test_any_command_line_is_a_result_or_one_line_error(scratch_namespace, argv):
    with netns.entered(scratch_namespace):
        result = CliRunner().invoke(main, argv, catch_exceptions=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{argv!r} raised {result.exception!r}"
    assert result.exit_code in (0, 1, 2), (argv, result.exit_code, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.lower().startswith("error")]
    assert len(errors) <= 1 and "Traceback" not in result.stderr, (argv, result.stderr)

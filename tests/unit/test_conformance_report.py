"""The conformance runner's report: each spec's outcome read from e2e.test's JUnit file, and the
two proxies' results side by side."""

from pyproxy.lab.conformance import Run, junit_results, side_by_side

JUNIT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="4" failures="1">
  <testsuite name="Kubernetes e2e suite" tests="4">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed"></testcase>
    <testcase name="[It] [sig-network] Services should serve a basic endpoint from pods  [Conformance]"
              classname="Kubernetes e2e suite" status="passed"></testcase>
    <testcase name="[It] [sig-network] Services should be able to create a functioning NodePort service [Conformance]"
              classname="Kubernetes e2e suite" status="failed"><failure message="timed out">...</failure></testcase>
    <testcase name="[It] [sig-network] Services should have session affinity work [Slow]"
              classname="Kubernetes e2e suite" status="skipped"><skipped message="skipped"></skipped></testcase>
  </testsuite>
</testsuites>
"""


def test_junit_gives_each_spec_its_outcome_without_the_suite_nodes(tmp_path):
    path = tmp_path / "junit_01.xml"
    path.write_text(JUNIT)
    assert junit_results(str(path)) == {
        "[sig-network] Services should serve a basic endpoint from pods  [Conformance]": "passed",
        "[sig-network] Services should be able to create a functioning NodePort service [Conformance]": "failed",
        "[sig-network] Services should have session affinity work [Slow]": "skipped",
    }


def test_side_by_side_lists_every_run_test_and_each_proxys_count():
    ours = Run("pyproxy", {"a": "passed", "b": "failed", "c": "skipped"})
    theirs = Run("kube-proxy", {"a": "passed", "b": "passed", "c": "skipped"})
    lines = side_by_side([ours, theirs]).splitlines()
    assert lines[1].split() == ["passed", "passed", "a"]
    assert lines[2].split() == ["failed", "passed", "b"]
    assert lines[-1].split() == ["1/2", "2/2", "passed"]
    assert not any(line.endswith("  c") for line in lines)  # skipped by both: not a result

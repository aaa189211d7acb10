"""The IPVS suite (tests/vm/guest), and the lab service and dual-stack suites with the IPVS
backend, in a qemu guest booting Debian's kernel, which has ip_vs and dummy as modules; this
machine's kernel has neither (see tests/vm/qemu.py). One boot runs them all; the console is
shown when something fails."""

from __future__ import annotations

import os
import sys

import pytest

from tests.vm import qemu


@pytest.mark.timeout(1200)
def test_ipvs_backend_in_a_guest_with_the_ip_vs_module():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces and qemu's 9p export of /)")
    # the IPVS suite, and the shared service and dual-stack suites with their IPVS parameter only
    command = ["env", "PYPROXY_IN_VM=1", "PYTHONDONTWRITEBYTECODE=1", sys.executable, "-m", "pytest", "-q",
               "-p", "no:cacheprovider", "--color=no", "tests/vm/guest", "tests/netns/test_services.py",
               "tests/netns/test_dualstack.py", "-k", "not legacy and not nft"]
    status, console = qemu.run(command, timeout=1100)
    summary = [line for line in console.splitlines() if " passed" in line or " failed" in line or "error" in line]
    print("\n".join(summary))
    assert status == 0, "the IPVS suite failed in the guest:\n" + console[-12000:]
    assert " passed" in "\n".join(summary) and "skipped" not in "\n".join(summary)

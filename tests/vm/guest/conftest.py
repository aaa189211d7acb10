"""These tests need the ip_vs module: they run in the qemu guest (tests/vm/test_ipvs_in_vm.py
boots it and sets PYPROXY_IN_VM), and are not collected anywhere else."""

import os

if not os.environ.get("PYPROXY_IN_VM"):
    collect_ignore_glob = ["test_*.py"]

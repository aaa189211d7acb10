"""Layering rules the import graph must keep: the CNI plugin (run once per pod start) loads only the
standard library and its own few modules, and no module reaches into another package's private
names."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pyproxy"
PLUGIN_ALLOWED = ("pyproxy.cni", "pyproxy.netlink", "pyproxy.netns")


def _modules_after(statement: str) -> set[str]:
    """sys.modules of a fresh interpreter once `statement` has run."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_cni_plugin_imports_only_the_standard_library_and_its_own_modules():
    # what the interpreter loads before any of ours (site-packages .pth hooks, __main__) is not counted
    loaded = _modules_after("import pyproxy.cni.plugin") - _modules_after("pass")
    assert "pyproxy.cni.plugin" in loaded
    ours = {m for m in loaded if m == "pyproxy" or m.startswith("pyproxy.")}
    outside = sorted(m for m in ours if m != "pyproxy"
                     and not any(m == a or m.startswith(a + ".") for a in PLUGIN_ALLOWED))
    assert outside == [], f"the CNI plugin imports {outside}"
    foreign = sorted(m for m in loaded - ours if m.split(".")[0] not in sys.stdlib_module_names)
    assert foreign == [], f"the CNI plugin imports non-stdlib modules {foreign}"


def _private_imports(path: Path, source: str) -> list[str]:
    """`from X import _name` in the module at `path` where X is not in the module's own package."""
    rel = path.relative_to(ROOT).with_suffix("")
    package = rel.parts[:-1]  # an __init__.py's package is its folder too
    out = []
    for node in ast.walk(ast.parse(source, str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        private = [a.name for a in node.names if a.name.startswith("_")]
        if not private:
            continue
        if node.level:
            base = package[:len(package) - (node.level - 1)]
            target = base + tuple(node.module.split(".") if node.module else ())
        else:
            target = tuple(node.module.split("."))
        # the target's package: a folder is its own, a module file's is the folder it is in
        target_package = target if (ROOT.joinpath(*target)).is_dir() else target[:-1]
        if target_package != package:
            out.append(f"{rel}.py:{node.lineno}: from {'.' * node.level}{node.module or ''} import {', '.join(private)}")
    return out


def test_no_private_name_is_imported_from_another_package():
    fake = PACKAGE / "ipvs" / "example.py"
    assert _private_imports(fake, "from ..netlink.core import _ERRNO, attr\nfrom .apply import _live\n") == [
        "pyproxy/ipvs/example.py:1: from ..netlink.core import _ERRNO"]
    found = [line for path in sorted(PACKAGE.rglob("*.py")) for line in _private_imports(path, path.read_text())]
    assert found == []


def _imports(path: Path) -> set[str]:
    """The pyproxy modules `path` imports, anywhere in it (function-level imports too)."""
    rel = path.relative_to(ROOT).with_suffix("").parts
    package = rel[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - (node.level - 1)] if node.level else ()
            module = ".".join(base + tuple(node.module.split(".") if node.module else ()))
            out |= {module} | {f"{module}.{a.name}" for a in node.names}
    return {m for m in out if m == "pyproxy" or m.startswith("pyproxy.")}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


GRAPH = {_module(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}
BACKENDS = ("pyproxy.iptables", "pyproxy.nftables", "pyproxy.ipvs")
# pure modules: the model, the node view and the text a backend writes, never the kernel or a source
PURE = ("pyproxy.model", "pyproxy.view", "pyproxy.backend", "pyproxy.chainhash", "pyproxy.rendertext",
        "pyproxy.tracing", "pyproxy.iptables.render", "pyproxy.nftables.render", "pyproxy.ipvs.render",
        "pyproxy.iptables.trace", "pyproxy.nftables.trace", "pyproxy.xtables.rules")
IMPURE = ("pyproxy.iptables.apply", "pyproxy.nftables.apply", "pyproxy.ipvs.apply", "pyproxy.cni", "pyproxy.lab",
          "pyproxy.sources", "pyproxy.netlink", "pyproxy.proxier", "pyproxy.daemon", "pyproxy.modes",
          "pyproxy.xtables.client")


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_model_view_and_renderers_never_import_kernel_io_sources_or_the_lab():
    broken = sorted(f"{m} imports {i}" for m, imports in GRAPH.items() if _under(m, PURE)
                    for i in imports if _under(i, IMPURE))
    assert broken == []


def test_backends_do_not_import_each_other():
    # IPVS mode writes iptables rules beside its virtual servers (kube-proxy's IPVS proxier does
    # too): what it shares with iptables mode is pyproxy.xtables, which both import
    broken = sorted(f"{m} imports {i}" for m, imports in GRAPH.items() for i in imports
                    for a in BACKENDS if _under(m, (a,)) for b in BACKENDS
                    if b != a and _under(i, (b,)))
    assert broken == []
    shared = sorted(f"{m} imports {i}" for m, imports in GRAPH.items() if _under(m, ("pyproxy.xtables",))
                    for i in imports if _under(i, BACKENDS))
    assert shared == [], "what the backends share depends on none of them"
    assert "pyproxy.xtables.client" in GRAPH["pyproxy.ipvs.apply"], "the import graph was read"

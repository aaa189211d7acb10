"""The one place that runs iptables-save and iptables-restore, for iptables mode and IPVS mode.

Every write is an `iptables-restore --wait` (atomic per table), streamed: a big ruleset is never
joined into one string, and restore parses on the other core while Python still renders."""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from typing import Iterable, Iterator

from ..backend import SyncError
from .rules import CANARY, LiveTable, parse_save


class ApplyError(SyncError):
    pass


def detect_variant(family: int = 4) -> str:
    """Follow the host: use the variant that already holds rules, else the system default."""
    base = "iptables" if family == 4 else "ip6tables"
    counts = {}
    for variant in ("legacy", "nft"):
        tool = f"{base}-{variant}-save"
        if shutil.which(tool):
            out = subprocess.run([tool], capture_output=True, text=True).stdout
            counts[variant] = sum(1 for line in out.splitlines() if line.startswith("-A "))
    if counts.get("legacy", 0) > counts.get("nft", 0):
        return "legacy"
    if counts.get("nft", 0):
        return "nft"
    version = subprocess.run([base, "--version"], capture_output=True, text=True).stdout
    return "legacy" if "legacy" in version else "nft"


class XtablesClient:
    """iptables-save and iptables-restore of one IP family and iptables variant."""

    def __init__(self, family: int = 4, variant: str = "auto") -> None:
        self.family = family
        self._variant = variant
        self.last_rules_written: dict[str, int] = {}  # table -> "-A" lines written, counted as they stream by

    @functools.cached_property
    def variant(self) -> str:
        """legacy or nft; "auto" asks the node at first use, not at construction."""
        return detect_variant(self.family) if self._variant == "auto" else self._variant

    @functools.cached_property
    def tool(self) -> str:
        return f"{'iptables' if self.family == 4 else 'ip6tables'}-{self.variant}"

    @functools.cached_property
    def save_tool(self) -> str:
        return self.tool + "-save"

    @functools.cached_property
    def restore_tool(self) -> str:
        return self.tool + "-restore"

    def save(self, *tables: str) -> dict[str, LiveTable]:
        out: dict[str, LiveTable] = {}
        for table in tables:
            proc = subprocess.run([self.save_tool, "-t", table], capture_output=True, text=True)
            if proc.returncode:
                raise ApplyError(f"{self.save_tool} -t {table}: {proc.stderr.strip()}")
            out.update(parse_save(proc.stdout))
            out.setdefault(table, LiveTable())
        return out

    def restore(self, lines: Iterable[str], noflush: bool = True) -> int:
        """Feed lines to iptables-restore as they are produced; return the bytes written.

        Streaming keeps a big ruleset out of memory as one string, and lets iptables-restore
        parse on the other core while Python is still rendering."""
        cmd = [self.restore_tool, "--wait", *(["--noflush"] if noflush else [])]
        written = 0
        rules = self.last_rules_written  # table -> "-A" lines written this sync, counted as they stream by
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
            assert proc.stdin is not None
            try:
                for batch in batches(counted(lines, rules), 4096):
                    data = batch.encode()
                    proc.stdin.write(data)
                    written += len(data)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # it gave up early; its stderr says why
            if proc.wait():
                err.seek(0)
                raise ApplyError(f"{self.restore_tool} failed: {err.read().decode(errors='replace').strip()}")
        return written

    def canary_present(self) -> bool:
        proc = subprocess.run([self.tool, "-w", "-t", "mangle", "-S", CANARY], capture_output=True)
        return proc.returncode == 0


def counted(lines: Iterable[str], rules: dict[str, int]) -> Iterator[str]:
    """The lines, counting the rules ("-A") of each table ("*nat") in `rules` on the way."""
    table = ""
    for line in lines:
        if line.startswith("-A"):
            rules[table] = rules.get(table, 0) + 1
        elif line.startswith("*"):
            table = line[1:]
            rules.setdefault(table, 0)
        yield line


def batches(lines: Iterable[str], size: int) -> Iterator[str]:
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= size:
            yield "\n".join(batch) + "\n"
            batch.clear()
    if batch:
        yield "\n".join(batch) + "\n"


"""The built-in source: Kubernetes YAML or JSON on disk.

Multi-document files, `kind: List` and the output of `kubectl get svc,endpointslices,nodes -A
-o yaml` all work. A file that cannot be read or parsed yields a Cluster whose `errors` say why,
so a caller keeps its previous state instead of programming an empty cluster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import yaml

from ..model.parse import Cluster, is_list, parse_objects

try:  # the C loader is ~10x faster on large dumps
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


class ManifestError(RuntimeError):
    pass


MAX_MANIFEST_BYTES = 256 << 20


def load_manifests(path: str, max_bytes: int = MAX_MANIFEST_BYTES) -> Cluster:
    """Parse a manifests file. Raises ManifestError, and never returns an empty cluster by
    accident: a file with no Kubernetes object in it (empty, truncated mid-save, only comments)
    is an error; only an explicit empty `kind: List` means "no objects"."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise ManifestError(f"{path}: {err.strerror}") from None
    if len(data) > max_bytes:
        raise ManifestError(f"{path}: larger than {max_bytes >> 20} MiB; refusing to read it")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not UTF-8 text (byte {err.start})") from None
    try:
        docs = [doc for doc in yaml.load_all(text, Loader=_Loader) if doc is not None]
    except yaml.YAMLError as err:
        raise ManifestError(f"{path}: not valid YAML: {_one_line(err)}") from None
    if not any(is_list(doc) or isinstance(doc, dict) and isinstance(doc.get("kind"), str) for doc in docs):
        raise ManifestError(f"{path}: no Kubernetes object in the file (an empty `kind: List` removes everything)")
    return parse_objects(docs)


def _one_line(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


@dataclass
class ManifestWatcher:
    """Polls a file for changes (editors replace files, so watch identity and size too)."""

    path: str
    _stamp: tuple | None = None

    def changed(self) -> bool:
        """True when the file changed since the last call, appeared, or went away."""
        try:
            st = os.stat(self.path)
            stamp: tuple = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError as err:
            stamp = ("unreadable", err.errno)
        if stamp != self._stamp:
            self._stamp = stamp
            return True
        return False

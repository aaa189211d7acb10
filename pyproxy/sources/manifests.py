"""The built-in source: Kubernetes YAML or JSON on disk.

Multi-document files, `kind: List` and the output of `kubectl get svc,endpointslices,nodes -A
-o yaml` all work. A file that cannot be read or parsed yields a Cluster whose `errors` say why,
so a caller keeps its previous state instead of programming an empty cluster.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Iterator

import yaml

from ..model.cluster import Cluster
from ..model.parse import is_list, parse_objects

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
    del data
    objects = []  # whether any document is a Kubernetes object at all

    def documents():
        for doc in _documents(text):
            if doc is None:
                continue
            if not objects and (is_list(doc) or isinstance(doc, dict) and isinstance(doc.get("kind"), str)):
                objects.append(True)
            yield doc

    try:
        cluster = parse_objects(documents())  # item by item: a parsed item's dicts are dropped
    except yaml.YAMLError as err:
        raise ManifestError(f"{path}: not valid YAML: {_one_line(err)}") from None
    except RecursionError:
        raise ManifestError(f"{path}: nested too deeply") from None
    if not objects:
        raise ManifestError(f"{path}: no Kubernetes object in the file (an empty `kind: List` removes everything)")
    return cluster


def _documents(text: str) -> Iterator:
    """The file's documents. JSON goes to the json module (much faster); one big block-style
    `kind: List` (what `kubectl get -o yaml` writes) is loaded item by item, so memory follows the
    largest item instead of the whole file (PyYAML holds a node per scalar of a document: 3.6 GB
    for a 58 MB List)."""
    head = text.lstrip()[:1]
    if head in ("{", "["):
        try:
            return [json.loads(text)]
        except ValueError:
            pass  # YAML flow style after all
    items = _block_list_items(text)
    if items is not None:
        rest, chunks = items
        try:
            document = yaml.load(rest, Loader=_Loader)
        except yaml.YAMLError:
            document = None  # not what it looked like: the whole file the ordinary way
        if isinstance(document, dict) and is_list({**document, "items": []}):
            return _items(document["kind"][: -len("List")], chunks)
    return yaml.load_all(text, Loader=_Loader)


def _items(kind: str, chunks: list[str]) -> Iterator:
    yield {"kind": "List", "items": []}  # the List itself: "a Kubernetes document", even if empty
    for chunk in chunks:
        for item in yaml.load(chunk, Loader=_Loader) or []:
            if isinstance(item, dict) and "kind" not in item and kind:
                item["kind"] = kind  # typed lists (ServiceList) omit it
            yield item


_ITEMS = re.compile(r"^items:[ \t]*(#.*)?$", re.M)


def _block_list_items(text: str) -> tuple[str, list[str]] | None:
    """(the document without its items, each item's text as a one-item block sequence) for a
    single-document List written in block style; None for anything else."""
    if len(text) < (1 << 20) or "\n---" in text[4:] or "\n..." in text:
        return None  # small files: the ordinary loader is fast enough
    match = _ITEMS.search(text)
    if match is None:
        return None
    lines = text[match.end():].split("\n")[1:]
    first = next((line for line in lines if line.strip() and not line.lstrip().startswith("#")), "")
    indent = len(first) - len(first.lstrip(" "))
    if not first[indent:].startswith("- "):
        return None
    marker, chunks, current, end = " " * indent + "- ", [], [], len(lines)
    for n, line in enumerate(lines):
        stripped = line.strip()
        if line.startswith(marker):
            if current:
                chunks.append("\n".join(current))
            current = [line[indent:]]
        elif not stripped or stripped.startswith("#") or line.startswith(" " * (indent + 1)):
            current.append(line[indent:] if line.startswith(" " * indent) else "")
        else:
            end = n  # the rest of the document (kind, metadata) after the items
            break
    if current:
        chunks.append("\n".join(current))
    rest = text[: match.start()] + "items: []\n" + "\n".join(lines[end:])
    return rest, chunks


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

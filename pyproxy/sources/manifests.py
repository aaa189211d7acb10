"""The built-in source: Kubernetes YAML or JSON on disk.

Multi-document files, `kind: List` and the output of `kubectl get svc,endpointslices,nodes -A
-o yaml` all work. A file that cannot be read or parsed yields a Cluster whose `errors` say why,
so a caller keeps its previous state instead of programming an empty cluster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import yaml

from ..model.parse import Cluster, parse_objects

try:  # the C loader is ~10x faster on large dumps
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


class ManifestError(RuntimeError):
    pass


def load_manifests(path: str) -> Cluster:
    try:
        with open(path) as f:
            docs = list(yaml.load_all(f, Loader=_Loader))
    except OSError as err:
        raise ManifestError(f"{path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ManifestError(f"{path}: not valid YAML: {err}") from None
    return parse_objects(docs)


@dataclass
class ManifestWatcher:
    """Polls a file for changes (editors replace files, so watch identity and size too)."""

    path: str
    _stamp: tuple | None = None

    def changed(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._stamp = stamp
            return True
        return False

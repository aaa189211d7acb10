"""A cluster made of network namespaces: nodes, pods (attached by our CNI plugin), an external
client. Used by `pyproxy lab` and by the dataplane tests."""

from .lab import Lab, LabError, Reply
from .spec import LabSpec, load_spec

__all__ = ["Lab", "LabError", "LabSpec", "Reply", "load_spec"]

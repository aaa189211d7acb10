"""pyproxy: a Kubernetes Service dataplane (kube-proxy replacement), a bridge CNI plugin and a
headless-Service DNS responder.

Kept empty on purpose: the CNI plugin imports `pyproxy.cni.*` on every pod start, and anything
imported here would be paid for on that path.
"""

__version__ = "0.1.0"

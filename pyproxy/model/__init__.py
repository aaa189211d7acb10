"""Frozen Kubernetes API types and their parsing. Nothing here does I/O."""

from .cluster import Cluster
from .parse import ValidationError, parse_object, parse_objects
from .types import Endpoint, EndpointPort, EndpointSlice, Node, Service, ServiceCIDR, ServicePort

__all__ = ["Cluster", "Endpoint", "EndpointPort", "EndpointSlice", "Node", "Service", "ServiceCIDR", "ServicePort",
           "ValidationError", "parse_object", "parse_objects"]

"""Where cluster state comes from: a manifests file (built in) or the Kubernetes API."""

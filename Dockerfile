# The image daemonset.yaml runs: pyproxy with the iptables, nftables, ipset, ipvsadm and conntrack tools.
FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv iptables nftables ipset ipvsadm conntrack iproute2 \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY pyproxy /src/pyproxy
RUN python3 -m venv /opt/pyproxy && /opt/pyproxy/bin/pip install --no-cache-dir /src && rm -rf /src
# invoked as kube-proxy it takes kube-proxy's arguments: a kube-proxy DaemonSet can switch only its image
RUN ln -s /opt/pyproxy/bin/pyproxy /usr/local/bin/kube-proxy
ENV PATH=/opt/pyproxy/bin:$PATH
ENTRYPOINT []
CMD ["pyproxy", "run"]

"""Netlink clients written with `struct`, standard library only.

    core       the wire format every family shares: message header, attributes, common
               constants, the walk over a reply buffer and the drain of queued errors
    route      rtnetlink: links, addresses, routes (the CNI plugin, the IPVS dummy device)
    ipvs       IPVS over generic netlink, batched
    nftables   nftables set and map element changes in one nfnetlink transaction
    conntrack  conntrack flows over ctnetlink: filtered dumps, batched deletes

Kept empty on purpose, like pyproxy/__init__.py: the CNI plugin imports `route` on every pod
start and should pay for nothing else.
"""

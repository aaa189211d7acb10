"""What iptables mode and IPVS mode share of iptables (kube-proxy's IPVS proxier writes iptables
rules beside its virtual servers too): the rules' vocabulary (`rules`, pure) and the one client
that runs iptables-save and iptables-restore (`client`). Neither backend imports the other."""

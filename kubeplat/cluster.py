"""Fixed facts of every cluster kubeplat builds: address ranges, names, durations."""

from __future__ import annotations

import ipaddress

SERVICE_CIDR = "10.96.0.0/12"
POD_CIDR = "10.244.0.0/16"
CLUSTER_DOMAIN = "cluster.local"
# The `kubernetes` service's address: the first host of the service range.
API_SERVICE_IP = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
CLUSTER_DNS_IP = str(ipaddress.ip_network(SERVICE_CIDR)[10])
API_PORT = 6443
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380

CA_DAYS = 3650
LEAF_DAYS = 365

"""The cluster network's address ranges, as the API server and every node agree on them.

The pod range (`--cluster-cidr`) is cut into one range per node by the API
server's range allocator; a node's pod traffic to it is never masqueraded, so
a pod on one node sees the sender's own address from any other.
"""

# Kubernetes' flannel/kubeadm convention: clear of the service range (10.96.0.0/12), the
# kubelet's static-pod bridge (10.88.0.0/16) and Docker's bridges (172.17.0.0/16 and up).
DEFAULT_CLUSTER_CIDR = "10.244.0.0/16"

#!/usr/bin/env bash
# Joins this machine to a cluster as a node: runs its kubelet and its kube-proxy under a
# supervisord of the node's own (tools/supervisor.py), which restarts either when it dies.
#
#   scripts/join-node.sh JOIN_DIR NODE_NAME NODE_IP        start both (again: leaves them running,
#                                                          restarts one whose code or flags changed)
#   scripts/join-node.sh stop NODE_NAME                    stop both, and the supervisord
#
# JOIN_DIR is what `make join-token` wrote on the control-plane machine (.kybernetes/join/):
# a bootstrap kubeconfig (the API server's token address, the cluster CA, a short-lived join
# token), the cluster's kube-proxy kubeconfig and cluster.env. NODE_IP is this machine's
# address on the LAN the control plane is on. Run from a checkout where `make images venv`
# has been run (Docker running, the pause image built), as root.
#
# The kubelet exchanges the token for its own certificate (system:node:NODE_NAME, its key
# never leaves this machine), registers its Node and waits for the pod range the API server
# gives it; the proxy then serves services here and routes every other node's pod range via
# that node's address. State: /var/lib/kybernetes/NODE_NAME (the supervisord's configuration
# and socket too: `.venv/bin/supervisorctl -c /var/lib/kybernetes/NODE_NAME/supervisor/supervisord.conf
# status`), logs: /var/log/kybernetes/.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
STATE_ROOT="${KYBERNETES_NODE_STATE:-/var/lib/kybernetes}"
LOG_DIR="${KYBERNETES_LOG_DIR:-/var/log/kybernetes}"

if [[ "${1:-}" == "stop" ]]; then
  node="${2:?usage: join-node.sh stop NODE_NAME}"
  # supervisord stops both (SIGTERM, SIGKILL after 15 s), then itself.
  "$PYTHON" -m tools.supervisor shutdown "$STATE_ROOT/$node"
  for component in proxy kubelet; do  # started by this script before supervisord ran them
    pid_file="$STATE_ROOT/$node/$component.pid"
    if [[ -f "$pid_file" ]]; then
      kill "$(cat "$pid_file")" 2>/dev/null || true
      rm -f "$pid_file"
    fi
  done
  exit 0
fi

join_dir="$(cd "${1:?usage: join-node.sh JOIN_DIR NODE_NAME NODE_IP}" && pwd)"
node="${2:?usage: join-node.sh JOIN_DIR NODE_NAME NODE_IP}"
node_ip="${3:?usage: join-node.sh JOIN_DIR NODE_NAME NODE_IP}"
# API_SERVER, CLUSTER_DNS, CLUSTER_CIDR, SERVICE_CIDR, PAUSE_IMAGE
# shellcheck source=/dev/null
source "$join_dir/cluster.env"
state="$STATE_ROOT/$node"
certs="$state/pki"
mkdir -p "$state" "$LOG_DIR"

start() {  # name, command...: under the node's supervisord (started with the first)
  local name="$1"; shift
  "$PYTHON" -m tools.supervisor run "$state" "$name" "$LOG_DIR/$node-$name.log" -- "$@"
}

start kubelet "$PYTHON" -m services.kubelet.main \
  --node-name "$node" --node-ip "$node_ip" --listen "$node_ip:10250" \
  --server "$API_SERVER" --bootstrap-kubeconfig "$join_dir/bootstrap.conf" --cert-dir "$certs" \
  --root-dir "$state/kubelet" --pause-image "$PAUSE_IMAGE" \
  --cluster-dns "$CLUSTER_DNS" --non-masquerade-cidr "$CLUSTER_CIDR"

# The proxy's status port serves with the node's certificate, which the kubelet has just been given.
for _ in $(seq 1 120); do
  [[ -s "$certs/kubelet.crt" ]] && break
  kubelet_state="$("$PYTHON" -m tools.supervisor state "$state" kubelet)"
  if [[ "$kubelet_state" != RUNNING && "$kubelet_state" != STARTING ]]; then
    echo "the kubelet is not running ($kubelet_state); last lines of $LOG_DIR/$node-kubelet.log:" >&2
    tail -n 20 "$LOG_DIR/$node-kubelet.log" >&2
    "$PYTHON" -m tools.supervisor shutdown "$state" >&2
    exit 1
  fi
  sleep 0.5
done
[[ -s "$certs/kubelet.crt" ]] || { echo "the kubelet got no certificate in 60 s" >&2; exit 1; }

start proxy "$PYTHON" -m services.proxy.main \
  --node-name "$node" --node-ip "$node_ip" --bind-address "$node_ip" \
  --server "$API_SERVER" --kubeconfig "$join_dir/kube-proxy.conf" \
  --tls-cert-file "$certs/kubelet.crt" --tls-private-key-file "$certs/kubelet.key" --client-ca-file "$certs/ca.crt" \
  --status-listen "$node_ip:10249" --service-cluster-ip-range "$SERVICE_CIDR"

"""Filters: can this pod run on this node?

Each filter returns the reasons the pod cannot run there (empty: it fits). A
node is judged by the first filter that rejects it, as Kubernetes does, except
that the resources filter names every resource that is short. The reasons of
all nodes make the message a pending pod carries:
`0/3 nodes are available: 2 node(s) didn't match node selector, 1 Insufficient cpu.`
"""

from __future__ import annotations

import collections
from typing import Callable, Sequence

from .cache import NodeInfo, PodInfo

NOT_READY = "node(s) were not ready"
UNSCHEDULABLE = "node(s) were unschedulable"
NODE_SELECTOR_MISMATCH = "node(s) didn't match node selector"
PORTS_IN_USE = "node(s) didn't have free ports for the requested pod ports"
INSUFFICIENT_CPU = "Insufficient cpu"
INSUFFICIENT_MEMORY = "Insufficient memory"
TOO_MANY_PODS = "Too many pods"

Reasons = tuple[str, ...]
Filter = Callable[[PodInfo, NodeInfo], Reasons]


def node_ready(pod: PodInfo, node: NodeInfo) -> Reasons:
    return () if node.ready else (NOT_READY,)


def node_schedulable(pod: PodInfo, node: NodeInfo) -> Reasons:
    return (UNSCHEDULABLE,) if node.unschedulable else ()


def node_selector_matches(pod: PodInfo, node: NodeInfo) -> Reasons:
    labels = node.labels
    for key, value in pod.node_selector.items():
        if labels.get(key) != value:
            return (NODE_SELECTOR_MISMATCH,)
    return ()


def host_ports_free(pod: PodInfo, node: NodeInfo) -> Reasons:
    if not pod.host_ports or not node.ports:
        return ()
    for wanted in pod.host_ports:
        for used in node.ports:
            if wanted.conflicts(used):
                return (PORTS_IN_USE,)
    return ()


def resources_fit(pod: PodInfo, node: NodeInfo) -> Reasons:
    reasons: list[str] = []
    if node.allocatable_pods is not None and node.pod_count + 1 > node.allocatable_pods:
        reasons.append(TOO_MANY_PODS)
    if pod.cpu_millis and node.requested_cpu + pod.cpu_millis > node.allocatable_cpu:
        reasons.append(INSUFFICIENT_CPU)
    if pod.memory_bytes and node.requested_memory + pod.memory_bytes > node.allocatable_memory:
        reasons.append(INSUFFICIENT_MEMORY)
    return tuple(reasons)


# Cheapest and most decisive first.
FILTERS: tuple[Filter, ...] = (node_ready, node_schedulable, node_selector_matches, host_ports_free, resources_fit)


def rejections(pod: PodInfo, node: NodeInfo) -> Reasons:
    """Why the pod cannot run on the node (empty: it fits)."""
    for check in FILTERS:
        reasons = check(pod, node)
        if reasons:
            return reasons
    return ()


# Kubernetes' percentageOfNodesToScore defaults (numFeasibleNodesToFind): below 100 nodes every
# node is considered; above, an adaptive share, never under 100 nodes nor 5 %.
MIN_FEASIBLE_NODES = 100
MIN_FEASIBLE_PERCENT = 5


def feasible_nodes_to_find(node_count: int) -> int:
    """How many fitting nodes the scheduler looks for before it scores them (Kubernetes'
    adaptive percentage: 50 % less one point per 125 nodes, at least 5 %): at 1,000 nodes
    420, at 5,000 500. Filtering and scoring every node cost the API server's loop ~5 ms
    per pod at 1,000 nodes (issue 16); a good node among 420 is as good a placement."""
    if node_count <= MIN_FEASIBLE_NODES:
        return node_count
    percent = max(50 - node_count // 125, MIN_FEASIBLE_PERCENT)
    return max(node_count * percent // 100, MIN_FEASIBLE_NODES)


def find_some_feasible(
    pod: PodInfo, nodes: Sequence[NodeInfo], *, want: int, start: int = 0
) -> tuple[list[NodeInfo], collections.Counter[str], int]:
    """Up to `want` nodes the pod fits on, looked for from nodes[start] round the list, as
    Kubernetes' findNodesThatPassFilters: each pod starts where the last one stopped, so every
    node gets its turn. Returns them, the rejections counted (of every node when none
    fits), and where the next search starts."""
    feasible: list[NodeInfo] = []
    failures: collections.Counter[str] = collections.Counter()
    count = len(nodes)
    examined = 0
    while examined < count and len(feasible) < want:
        node = nodes[(start + examined) % count]
        examined += 1
        reasons = rejections(pod, node)
        if reasons:
            failures.update(reasons)
        else:
            feasible.append(node)
    return feasible, failures, (start + examined) % count if count else 0


def unschedulable_message(node_count: int, failures: collections.Counter[str]) -> str:
    """Kubernetes' FitError wording; the most common reason first."""
    if node_count == 0:
        return "0/0 nodes are available: no nodes are registered."
    parts = [f"{count} {reason}" for reason, count in sorted(failures.items(), key=lambda item: (-item[1], item[0]))]
    return f"0/{node_count} nodes are available: {', '.join(parts)}."

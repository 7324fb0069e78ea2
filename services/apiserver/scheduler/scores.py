"""Scores: of the nodes a pod fits on, which is best? Each score is 0..10, higher is better.

- least requested: prefer the node with the most cpu and memory left after
  placing the pod (pods that request nothing count as a small default, so they
  still spread by load);
- spread: prefer the node with the fewest pods sharing a spread group (the
  same controller, or a service whose selector matches) with the pod, so a
  node failure takes as few replicas of one service as possible.

The sum decides; ties are broken at random so equal nodes share the load.
"""

from __future__ import annotations

import random
from typing import Sequence

from .cache import NodeInfo, PodInfo

MAX_SCORE = 10.0


def _free_fraction(capacity: int, requested: int) -> float:
    if capacity <= 0 or requested >= capacity:
        return 0.0
    return (capacity - requested) / capacity


def least_requested(pod: PodInfo, node: NodeInfo) -> float:
    cpu = _free_fraction(node.allocatable_cpu, node.score_cpu + pod.score_cpu_millis)
    memory = _free_fraction(node.allocatable_memory, node.score_memory + pod.score_memory_bytes)
    return MAX_SCORE * (cpu + memory) / 2


def spread(pod: PodInfo, nodes: Sequence[NodeInfo]) -> list[float]:
    """Fewer pods of the pod's groups on a node: a higher score (relative to the fullest node)."""
    if not pod.groups:
        return [MAX_SCORE] * len(nodes)
    counts = [node.spread_count(pod.groups) for node in nodes]
    most = max(counts)
    if most == 0:
        return [MAX_SCORE] * len(nodes)
    return [MAX_SCORE * (most - count) / most for count in counts]


def score_nodes(pod: PodInfo, nodes: Sequence[NodeInfo]) -> list[float]:
    return [
        least + spreading
        for least, spreading in zip((least_requested(pod, n) for n in nodes), spread(pod, nodes), strict=True)
    ]


def select_node(pod: PodInfo, nodes: Sequence[NodeInfo], rng: random.Random | None = None) -> NodeInfo:
    """The best-scoring node (nodes must not be empty); a random one among equals."""
    scores = score_nodes(pod, nodes)
    best = max(scores)
    # Scores are sums of floats: equal within rounding is equal.
    top = [node for node, score in zip(nodes, scores, strict=True) if score >= best - 1e-9]
    if len(top) == 1:
        return top[0]
    return (rng or random).choice(top)

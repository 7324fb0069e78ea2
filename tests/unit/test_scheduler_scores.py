"""Scheduler scores and the cache's aggregates: where a pod goes among nodes it fits on."""

from __future__ import annotations

import collections
import random

import pytest

from kybernetes.v1 import meta_pb2, pod_pb2
from services.apiserver.scheduler.cache import PodInfo, SchedulerCache
from services.apiserver.scheduler.scores import MAX_SCORE, least_requested, select_node, spread

from .test_scheduler_filters import node, pod


def owned(name: str, controller_uid: str, labels: dict[str, str] | None = None) -> pod_pb2.Pod:
    p = pod(name)
    p.metadata.labels.update(labels or {})
    if controller_uid:
        p.metadata.owner_references.add(kind="ReplicationController", name="rc", uid=controller_uid, controller=True)
    return p


def cluster(*names: str, **node_options) -> SchedulerCache:
    cache = SchedulerCache()
    for name in names:
        cache.set_node(node(name, **node_options))
    return cache


def bind(cache: SchedulerCache, p: pod_pb2.Pod, node_name: str) -> None:
    p.spec.node_name = node_name
    cache.set_bound_pod(p)


def test_least_requested_prefers_the_emptier_node():
    cache = cluster("busy", "idle", allocatable={"cpu": "4", "memory": "8Gi"})
    bind(cache, pod("a", cpu="3", memory="6Gi"), "busy")
    info = PodInfo.from_pod(pod(cpu="500m", memory="1Gi"))
    busy, idle = cache.nodes["busy"], cache.nodes["idle"]
    assert least_requested(info, idle) > least_requested(info, busy)
    # idle: (4-0.5)/4 cpu and (8-1)/8 memory free after placing the pod.
    assert least_requested(info, idle) == pytest.approx(MAX_SCORE * (3.5 / 4 + 7 / 8) / 2)


def test_pods_without_requests_still_count_for_load():
    cache = cluster("a", "b")
    bind(cache, pod("x"), "a")
    info = PodInfo.from_pod(pod())
    assert least_requested(info, cache.nodes["b"]) > least_requested(info, cache.nodes["a"])


def test_least_requested_is_zero_for_a_node_that_reports_nothing():
    cache = cluster("bare", allocatable={})
    assert least_requested(PodInfo.from_pod(pod()), cache.nodes["bare"]) == 0


@pytest.mark.parametrize(
    ("placed", "expected"),
    [
        pytest.param({}, {"a": MAX_SCORE, "b": MAX_SCORE, "c": MAX_SCORE}, id="no-peers-anywhere"),
        pytest.param({"a": 2, "b": 1}, {"a": 0.0, "b": MAX_SCORE / 2, "c": MAX_SCORE}, id="fewest-peers-best"),
        pytest.param({"a": 1, "b": 1, "c": 1}, {"a": 0.0, "b": 0.0, "c": 0.0}, id="even"),
    ],
)
def test_spread_of_one_controller(placed, expected):
    cache = cluster("a", "b", "c")
    for node_name, count in placed.items():
        for i in range(count):
            bind(cache, owned(f"{node_name}-{i}", "rc-1"), node_name)
    bind(cache, owned("stranger", "rc-2"), "c")  # another controller's pod is not a peer
    info = cache.pod_info(owned("new", "rc-1"))
    nodes = cache.registered_nodes()
    assert dict(zip((n.name for n in nodes), spread(info, nodes), strict=True)) == expected


def test_service_selector_makes_pods_of_different_controllers_peers():
    cache = cluster("a", "b")
    cache.set_service("default", "web", {"app": "web"})
    bind(cache, owned("canary", "rc-canary", {"app": "web", "track": "canary"}), "a")
    info = cache.pod_info(owned("stable", "rc-stable", {"app": "web", "track": "stable"}))
    nodes = cache.registered_nodes()
    assert spread(info, nodes) == [0.0, MAX_SCORE]


def test_service_created_after_pods_regroups_them():
    cache = cluster("a", "b")
    bind(cache, owned("x", "", {"app": "web"}), "a")
    info = cache.pod_info(owned("y", "", {"app": "web"}))
    assert spread(info, cache.registered_nodes()) == [MAX_SCORE, MAX_SCORE]
    cache.set_service("default", "web", {"app": "web"})
    info = cache.pod_info(owned("y", "", {"app": "web"}))
    assert spread(info, cache.registered_nodes()) == [0.0, MAX_SCORE]
    cache.remove_service("default", "web")
    info = cache.pod_info(owned("y", "", {"app": "web"}))
    assert spread(info, cache.registered_nodes()) == [MAX_SCORE, MAX_SCORE]


def test_a_pod_in_several_of_the_groups_counts_once():
    cache = cluster("a")
    cache.set_service("default", "web", {"app": "web"})
    bind(cache, owned("x", "rc-1", {"app": "web"}), "a")  # controller:rc-1 and service:default/web
    bind(cache, owned("y", "rc-2", {"app": "web"}), "a")  # service:default/web only in common
    bind(cache, owned("z", "rc-1"), "a")  # controller:rc-1 only
    node_a = cache.nodes["a"]
    assert node_a.spread_count(cache.pod_info(owned("new", "rc-1", {"app": "web"})).groups) == 3
    assert node_a.spread_count(cache.pod_info(owned("new", "rc-1")).groups) == 2
    assert node_a.spread_count(cache.pod_info(owned("new", "rc-3", {"app": "web"})).groups) == 2
    assert node_a.spread_count(cache.pod_info(owned("new", "rc-3")).groups) == 0


def test_spread_counts_match_a_count_of_the_pods_after_any_adds_and_removes():
    rng = random.Random(7)
    all_groups = ["controller:1", "controller:2", "service:default/a", "service:default/b"]
    cache = cluster("a")
    node_a = cache.nodes["a"]
    held: list[PodInfo] = []
    for step in range(500):
        if held and rng.random() < 0.4:
            node_a.remove(held.pop(rng.randrange(len(held))))
        else:
            info = PodInfo.from_pod(pod(f"p{step}"))
            info.groups = frozenset(rng.sample(all_groups, rng.randint(0, 3)))
            node_a.add(info)
            held.append(info)
        asked = frozenset(rng.sample(all_groups, rng.randint(1, 3)))
        assert node_a.spread_count(asked) == sum(1 for info in held if info.groups & asked)


def test_a_burst_of_replicas_spreads_evenly_through_assumptions():
    cache = cluster("a", "b", "c")
    rng = random.Random(7)
    for i in range(9):
        info = cache.pod_info(owned(f"r{i}", "rc-1"))
        chosen = select_node(info, cache.registered_nodes(), rng)
        cache.assume(info, chosen.name)
    counts = collections.Counter(node_name for _, node_name, _ in cache.placed_pods())
    assert counts == {"a": 3, "b": 3, "c": 3}


def test_assumption_is_replaced_by_the_bound_pod_and_forgotten_on_failure():
    cache = cluster("a", "b")
    p = owned("web", "rc-1")
    info = cache.pod_info(p)
    cache.assume(info, "a")
    assert cache.nodes["a"].pod_count == 1 and cache.is_assumed(("default", "web"))
    bind(cache, p, "b")  # e.g. another scheduler won the race: the watch is the truth
    assert cache.nodes["a"].pod_count == 0 and cache.nodes["b"].pod_count == 1
    assert not cache.is_assumed(("default", "web"))
    cache.forget(("default", "web"), info.uid)  # not an assumption any more: kept
    assert cache.nodes["b"].pod_count == 1

    other = cache.pod_info(owned("other", "rc-1"))
    cache.assume(other, "a")
    cache.forget(("default", "other"), other.uid)
    assert cache.nodes["a"].pod_count == 0


def test_ties_are_broken_at_random():
    cache = cluster("a", "b", "c")
    rng = random.Random(1)
    info = PodInfo.from_pod(pod())
    chosen = {select_node(info, cache.registered_nodes(), rng).name for _ in range(50)}
    assert chosen == {"a", "b", "c"}


def test_deleted_node_is_no_candidate_but_keeps_its_pods_counted():
    cache = cluster("a", "b")
    bind(cache, pod("x", cpu="1"), "a")
    cache.remove_node("a")
    assert [n.name for n in cache.registered_nodes()] == ["b"]
    cache.set_node(node("a"))
    assert cache.nodes["a"].requested_cpu == 1000


def test_pod_info_reads_requests_ports_and_owner():
    p = pod_pb2.Pod(metadata=meta_pb2.ObjectMeta(name="p", namespace="ns", uid="u"))
    p.metadata.owner_references.add(kind="ReplicationController", name="rc", uid="rc-uid", controller=True)
    c = p.spec.containers.add(name="a", image="x")
    c.resources.requests.update({"cpu": "250m", "memory": "64Mi"})
    c.ports.add(container_port=80, host_port=8080, protocol="TCP")
    c.ports.add(container_port=81)
    info = PodInfo.from_pod(p)
    assert (info.cpu_millis, info.memory_bytes) == (250, 64 * 2**20)
    assert [(hp.port, hp.protocol, hp.ip) for hp in info.host_ports] == [(8080, "TCP", "0.0.0.0")]
    assert info.controller_uid == "rc-uid"

"""Controllers and terminating pods (deletionTimestamp set), without an API server: the
replicator does not count them (Kubernetes' FilterActivePods) and takes their marking as their
deletion; the scheduler never places one, and a bound one keeps its resources and host ports
on its node (but no longer counts for spreading) until it is gone or finished."""

from __future__ import annotations

import copy
from typing import Any

from kybernetes.v1 import pod_pb2
from services.apiserver.scheduler.scheduler import Scheduler
from services.replicator.manager import ReplicationManager
from services.replicator.replicas import deletion_order, owner_reference, replica_diff

from .test_replicator_replicas import pod as rc_pod
from .test_replicator_replicas import rc
from .test_scheduler_filters import node
from .test_scheduler_filters import pod as sched_pod


def terminating(p: pod_pb2.Pod, grace: int = 30) -> pod_pb2.Pod:
    marked = copy.deepcopy(p)
    marked.metadata.deletion_timestamp.seconds = 1_800_000_000
    marked.metadata.deletion_grace_period_seconds = grace
    return marked


class FakeInformer:
    def __init__(self, *objects: Any) -> None:
        self.objects = {(o.metadata.namespace, o.metadata.name): o for o in objects}

    def get(self, namespace: str, name: str) -> Any:
        return self.objects.get((namespace, name))

    def get_many(self, keys: Any) -> list[Any]:
        return [self.objects[key] for key in keys if key in self.objects]

    def in_namespace(self, namespace: str) -> list[Any]:
        return [o for (ns, _), o in sorted(self.objects.items()) if ns == namespace]

    def list(self) -> list[Any]:
        return list(self.objects.values())

    def __len__(self) -> int:
        return len(self.objects)


def owned(name: str, controller: Any) -> pod_pb2.Pod:
    p = rc_pod(name)
    p.metadata.owner_references.append(owner_reference(controller))
    return p


async def test_the_replicator_counts_only_live_pods_and_replaces_a_terminating_one_at_once() -> None:
    controller = rc(replicas=3)
    pods = [owned("a", controller), owned("b", controller), terminating(owned("c", controller))]
    manager = ReplicationManager()
    manager.rcs, manager.pods = FakeInformer(controller), FakeInformer(*pods)
    for p in pods:  # what the pod informer's handler does
        manager.owners.update("ADDED", p)
    active = await manager._claim(controller)
    assert sorted(p.metadata.name for p in active) == ["a", "b"]
    assert replica_diff(controller, active) == 1  # the replacement, while "c" still stops

    # Scaling down to 1: one more goes, never the terminating one (not counted, not deleted twice).
    controller.spec.replicas = 1
    assert replica_diff(controller, active) == -1
    assert "c" not in {p.metadata.name for p in deletion_order(active)}


async def test_a_pods_marking_meets_the_expectation_of_its_deletion() -> None:
    controller = rc(replicas=1)
    doomed = owned("b", controller)
    manager = ReplicationManager()
    manager.rcs, manager.pods = FakeInformer(controller), FakeInformer(owned("a", controller), doomed)
    key = ("prod", "web")
    manager.expectations.expect(key, deletions=[doomed.metadata.uid])
    assert not manager.expectations.satisfied(key)
    manager._on_pod("MODIFIED", terminating(doomed), doomed)  # not gone yet: its kubelet stops it
    assert manager.expectations.satisfied(key)


async def test_a_terminating_pod_of_a_gone_controller_is_not_collected_again() -> None:
    controller = rc(replicas=1)
    manager = ReplicationManager()
    manager.rcs = FakeInformer()  # the controller is gone
    going, left = terminating(owned("going", controller)), owned("left", controller)
    manager.pods = FakeInformer(going, left)
    manager._synced = True
    manager._on_pod("MODIFIED", going, going)
    manager._on_pod("MODIFIED", left, left)
    manager._scan_for_garbage()
    queued = []
    while len(manager.gc_queue):
        queued.append(await manager.gc_queue.get())
        manager.gc_queue.done(queued[-1])
    assert queued == [("prod", "left")]


def test_the_scheduler_never_places_a_pod_being_deleted() -> None:
    scheduler = Scheduler()
    pending = sched_pod("pending")
    pending.metadata.finalizers.append("example.com/hold")
    scheduler._on_pod("ADDED", pending, None)
    assert ("default", "pending") in scheduler._active_set
    scheduler._on_pod("MODIFIED", terminating(pending, grace=0), pending)
    assert ("default", "pending") not in scheduler._active_set


def test_a_terminating_pod_holds_its_resources_and_ports_but_not_its_spread() -> None:
    scheduler = Scheduler()
    cache = scheduler.cache
    cache.set_node(node("n1", allocatable={"cpu": "2", "memory": "4Gi"}))
    placed = sched_pod("web", cpu="1", memory="1Gi", host_ports=[(8080, "TCP", "")])
    placed.spec.node_name = "n1"
    placed.metadata.owner_references.add(kind="ReplicationController", name="rc", uid="rc-uid", controller=True)
    scheduler._on_pod("ADDED", placed, None)
    n1 = cache.nodes["n1"]
    groups = frozenset({"controller:rc-uid"})
    assert (n1.requested_cpu, n1.pod_count, n1.spread_count(groups)) == (1000, 1, 1)
    assert len(n1.ports) == 1

    scheduler._on_pod("MODIFIED", terminating(placed), placed)
    assert (n1.requested_cpu, n1.requested_memory, n1.pod_count) == (1000, 1024**3, 1)
    assert len(n1.ports) == 1  # its replacement cannot take the host port until it is gone
    assert n1.spread_count(groups) == 0

    finished = terminating(placed)
    finished.status.phase = "Failed"
    scheduler._on_pod("MODIFIED", finished, placed)
    assert (n1.requested_cpu, n1.pod_count, len(n1.ports)) == (0, 0, 0)


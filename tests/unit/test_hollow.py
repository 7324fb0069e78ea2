"""Hollow nodes' stand-ins: the fake runtime, the in-memory pod network, the recording data
path, and the real kubelet running a static pod on them (no Docker, no kernel, no API server)."""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import json
import random
from pathlib import Path

import pytest

from kybernetes.v1 import pod_pb2
from services.kubelet.containers import CREATED, EXITED, RUNNING, ContainerCache
from services.kubelet.dockerspec import CreateRequest
from services.kubelet.fakeruntime import EXIT_KILLED, FakeRuntime
from services.kubelet.hollow import HollowKubelet, HollowPodNetwork, RecordingHostPorts, hollow_config
from services.kubelet.hostports import HostPortError, PortMapping
from services.kubelet.naming import LABEL_POD_UID
from services.kubelet.podworker import RESYNC_JITTER, PodWorker, resync_delay
from services.kubelet.podnetwork import DEFAULT_POD_CIDR, PodNetworkError
from services.kubelet.runtime import RuntimeCallError
from services.proxy.hollow import RecordingDataPath
from services.proxy.nftproxier import NftOptions
from tests.polling import eventually
from tests.unit.proxy_objects import endpoints, service


def request(name: str, uid: str = "pod-1") -> CreateRequest:
    return CreateRequest(image="busybox", name=name, labels={LABEL_POD_UID: uid}, host_config_kwargs={},
                         container_kwargs={})


async def test_fake_runtime_records_every_transition_in_the_cache():
    changed: list[str] = []
    cache = ContainerCache(changed.append)
    runtime = FakeRuntime("n1", cache)
    info = await runtime.create(request("a"))
    assert info.state == CREATED and cache.get(info.id) == info
    started = await runtime.start(info)
    assert started.state == RUNNING and started.pid and cache.get(info.id).running
    with pytest.raises(RuntimeCallError):
        await runtime.create(request("a"))  # a name is taken until its container is removed
    assert await runtime.exec(info.id, ["true"], 1.0) == (0, b"")
    await runtime.stop(started, 30)
    assert cache.get(info.id).state == EXITED and cache.get(info.id).exit_code == 0
    await runtime.remove(started)
    assert cache.get(info.id) is None and await runtime.pod_uids_on_host() == set()
    assert changed and set(changed) == {"pod-1"}


async def test_fake_runtime_kill_is_a_crash_and_resync_restores_the_cache():
    cache = ContainerCache()
    runtime = FakeRuntime("n1", cache)
    info = await runtime.start(await runtime.create(request("a")))
    assert runtime.kill(info.id)
    assert cache.get(info.id).exit_code == EXIT_KILLED and not runtime.kill(info.id)
    cache.remove(info.id)
    cache.put(info)  # a stale entry, and a missing one
    other = await runtime.create(request("b"))
    cache.remove(other.id)
    await runtime.resync()
    assert cache.get(info.id).state == EXITED and cache.get(other.id).state == CREATED


async def test_hollow_pod_network_hands_out_addresses_of_its_range_in_memory():
    network = HollowPodNetwork("n1")
    assert not network.configured
    with pytest.raises(PodNetworkError):
        await network.address_for("a")
    assert await network.configure("10.244.3.0/30")
    first = await network.address_for("a")
    assert first == "10.244.3.2"  # .1 is the gateway
    assert await network.address_for("a") == first
    with pytest.raises(PodNetworkError, match="no free address"):
        await network.address_for("b")
    await network.release("a")
    assert await network.address_for("b") == first
    await network.collect_garbage({"c"})
    assert network.pool.allocations() == []
    assert not network.attached("s1")
    await network.attach("s1", 1, first)
    assert network.attached("s1")
    assert await network.write_pod_files("/nonexistent", first, "h") == {}


async def test_recording_host_ports_refuse_a_port_another_pod_holds_without_opening_it():
    ports = RecordingHostPorts("n1", "127.0.0.1")
    web = (PortMapping("", "TCP", 8080, 80),)
    await ports.reserve("a", "ns/a", web)
    with pytest.raises(HostPortError, match="address already in use"):
        await ports.reserve("b", "ns/b", web)
    await ports.publish("a", "ns/a", "10.244.0.2", web)
    assert ports.transactions == 1 and [p.pod_ip for p in ports.published()] == ["10.244.0.2"]
    assert list(ports.held().values()) == ["a"]
    await ports.remove("a")
    await ports.reserve("b", "ns/b", web)
    assert list(ports.held().values()) == ["b"]


async def test_recording_data_path_computes_the_rules_and_records_them():
    path = RecordingDataPath(NftOptions(node_name="n1", min_sync_period=0), keep_last=True)
    runner = asyncio.create_task(path.run())
    try:
        path.on_endpoints_event("ADDED", endpoints(["10.244.0.5"]))
        path.on_service_event("ADDED", service())
        path.mark_synced()
        await path.wait_installed(5)
        assert path.recorded.transactions >= 1
        assert "10.244.0.5" in path.recorded.last_script and "10.96.0.10" in path.recorded.last_script
        assert path.programmed_services() == 1
        assert path.status()[0].endpoints == ["10.244.0.5:8080"]
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


def static_pod(name: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "main", "image": "busybox",
                "readinessProbe": {"httpGet": {"port": 8080, "path": "/"}, "periodSeconds": 1},
            }],
        },
    }


def status_of(kubelet: HollowKubelet, name: str) -> pod_pb2.PodStatus | None:
    pod = kubelet.find_pod("default", name)
    return kubelet.status.get(pod.metadata.uid) if pod is not None else None


async def test_the_real_kubelet_runs_restarts_and_removes_a_pod_on_a_hollow_node(tmp_path: Path):
    manifest = tmp_path / "manifests"
    manifest.mkdir()
    (manifest / "web.json").write_text(json.dumps(static_pod("web")))
    config = hollow_config("hollow-unit", str(tmp_path / "root"), manifest_path=str(manifest),
                           file_check_frequency=0.2, restart_backoff_initial=0.1, restart_backoff_max=0.2)
    kubelet = HollowKubelet(config)
    await kubelet.start()
    try:
        def running():
            status = status_of(kubelet, "web-hollow-unit")
            assert status is not None and status.phase == "Running", status
            assert status.container_statuses[0].ready, "the HTTP readiness probe passes without a network"
            return status

        status = await eventually(running, timeout=10, interval=0.05)
        assert ipaddress.ip_address(status.pod_ip) in ipaddress.ip_network(DEFAULT_POD_CIDR)
        runtime = kubelet.fake_runtime
        assert runtime.running() == 2  # the sandbox and the container

        [app] = [c for c in runtime.containers() if c.running and not c.is_infra]
        runtime.kill(app.id)

        def restarted():
            current = status_of(kubelet, "web-hollow-unit")
            assert current is not None and current.container_statuses[0].restart_count == 1, current
            assert current.phase == "Running" and runtime.running() == 2
            return current

        after = await eventually(restarted, timeout=10, interval=0.05)
        assert after.pod_ip == status.pod_ip

        (manifest / "web.json").unlink()

        def gone():
            assert not runtime.containers() and not kubelet.workers
            return True

        await eventually(gone, timeout=10, interval=0.05)
        assert kubelet.network is not None and kubelet.network.pool.allocations() == []
    finally:
        await kubelet.stop()


async def test_a_resync_removes_the_pod_directories_of_pods_this_node_no_longer_has(tmp_path: Path):
    manifest = tmp_path / "manifests"
    manifest.mkdir()
    (manifest / "web.json").write_text(json.dumps(static_pod("web")))
    root = tmp_path / "root"
    pods = root / "pods"
    for uid, node in (("gone-pod", "hollow-unit"), ("other-nodes-pod", "hollow-other")):
        (pods / uid).mkdir(parents=True)
        (pods / uid / "node").write_text(node)
    config = hollow_config("hollow-unit", str(root), manifest_path=str(manifest), file_check_frequency=0.2,
                           sync_frequency=0.2)
    kubelet = HollowKubelet(config)
    await kubelet.start()
    try:
        def cleaned():
            assert sorted(path.name for path in pods.iterdir()) == sorted(
                ["other-nodes-pod", *kubelet.workers]
            ), "only the pod directory of this node's gone pod is removed"
            assert status_of(kubelet, "web-hollow-unit").phase == "Running"
            return True

        await eventually(cleaned, timeout=10, interval=0.05)
    finally:
        await kubelet.stop()


def test_periodic_syncs_are_spread_over_half_an_interval_more():
    rng = random.Random(3)
    delays = [resync_delay(60.0, rng) for _ in range(1000)]
    assert 60.0 <= min(delays) and max(delays) <= 60.0 * (1 + RESYNC_JITTER)
    assert max(delays) - min(delays) > 25.0, "spread, not one instant for every pod"


async def test_every_pod_is_synced_again_on_its_own_without_any_change(tmp_path: Path, monkeypatch):
    synced: collections.Counter[str] = collections.Counter()
    sync = PodWorker._sync

    async def counted(worker: PodWorker, pod: pod_pb2.Pod) -> None:
        synced[pod.metadata.name] += 1
        await sync(worker, pod)

    monkeypatch.setattr(PodWorker, "_sync", counted)
    manifest = tmp_path / "manifests"
    manifest.mkdir()
    for name in ("a", "b"):
        (manifest / f"{name}.json").write_text(json.dumps(static_pod(name)))
    config = hollow_config("hollow-unit", str(tmp_path / "root"), manifest_path=str(manifest),
                           file_check_frequency=60.0, sync_frequency=0.1)
    kubelet = HollowKubelet(config)
    await kubelet.start()
    try:
        await eventually(lambda: all(status_of(kubelet, f"{name}-hollow-unit") for name in ("a", "b")),
                         timeout=10, interval=0.05)
        before = dict(synced)
        assert len(before) == 2
        await eventually(lambda: all(synced[name] >= before[name] + 5 for name in before), timeout=10,
                         interval=0.05)
    finally:
        await kubelet.stop()

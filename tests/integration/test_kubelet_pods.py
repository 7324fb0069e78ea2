"""The kubelet runs pods on the real Docker daemon: shared network and volumes,
host ports, restart policies, spec changes, deletion and errors.

Host ports are the kubelet's own (hostports.py): the pod is on the pod network
and the node's `kyb-hostports-<node>` table DNATs its host ports; every test
deletes the tables of its nodes afterwards, pass or fail (the kubelet leaves
them in place when it stops). The tests leave `route_localnet` on for the pod
bridge, as the proxy's tests leave it on for every interface."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Iterator

import docker
import grpc
import pytest

from kybernetes.v1 import pod_pb2
from services.kubelet.hostports import cleanup_commands, script, table_name
from services.kubelet.podnetwork import DEFAULT_BRIDGE, DEFAULT_POD_CIDR
from tests.integration.kubelet_helpers import (
    KubeletProcess,
    container,
    container_status,
    docker_client,
    is_running,
    make_pod,
    node_containers,
    sleeper,
    unique_node,
)
from tests.polling import eventually
from tools.processes import free_port

pytestmark = pytest.mark.docker


def _http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=3) as response:
        return response.read().decode()


async def _fetch(url: str) -> str | None:
    try:
        return await asyncio.to_thread(_http_get, url)
    except OSError:
        return None


def _hostports_table(node: str) -> str:
    """The node's host ports table as nft lists it; "" when it has none."""
    listed = subprocess.run(["nft", "list", "table", "ip", table_name(node)], capture_output=True, text=True)
    return listed.stdout if listed.returncode == 0 else ""


def _delete_hostports_table(node: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=script(cleanup_commands(table_name(node))), text=True, check=False)


@pytest.fixture(autouse=True)
def _no_hostports_table_left(node_name: str) -> Iterator[None]:
    yield
    _delete_hostports_table(node_name)


def _bindable(address: str, port: int) -> bool:
    """Whether a process could take the port now (not while the kubelet holds it)."""
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def _web(text: str, port: int, host_ip: str = "") -> pod_pb2.Container:
    return container(
        "web", "sh", "-c", f"echo {text} > /index.html; exec httpd -f -p 80 -h /",
        ports=[pod_pb2.ContainerPort(container_port=80, host_port=port, host_ip=host_ip)],
    )


async def test_two_containers_share_localhost_and_an_empty_dir(kubelet: KubeletProcess) -> None:
    server = container(
        "server", "sh", "-c", "echo hello-from-server > /www/index.html; exec httpd -f -p 8080 -h /www",
        volume_mounts=[pod_pb2.VolumeMount(name="shared", mount_path="/www")],
    )
    client = container(
        "client", "sh", "-c",
        "trap 'exit 0' TERM; while true; do wget -q -O /data/fetched http://localhost:8080/index.html; sleep 1; done",
        volume_mounts=[pod_pb2.VolumeMount(name="shared", mount_path="/data")],
    )
    volume = pod_pb2.Volume(name="shared", empty_dir=pod_pb2.EmptyDirVolumeSource())
    submitted = await kubelet.submit(make_pod("web", server, client, volumes=[volume]))
    assert submitted.metadata.name == f"web-{kubelet.node}"

    pod = await eventually(lambda: _running(kubelet, "web"), what="pod running")
    assert pod.status.pod_ip and pod.status.host_ip == "127.0.0.1"
    # The client reached the server on localhost and wrote into the volume both share.
    fetched = os.path.join(kubelet.root_dir, "pods", submitted.metadata.uid, "volumes", "shared", "fetched")
    await eventually(lambda: _file_has(fetched, "hello-from-server"), what="client fetched the page over localhost")
    # The pod's IP is reachable from the host.
    assert "hello-from-server" in await asyncio.to_thread(_http_get, f"http://{pod.status.pod_ip}:8080/index.html")
    # One infra container plus one per spec container, all labelled with the node.
    names = {c["Labels"]["io.kybernetes.container.name"] for c in node_containers(kubelet.node)}
    assert names == {"POD", "server", "client"}


async def _running(kubelet: KubeletProcess, name: str) -> pod_pb2.Pod | None:
    pod = await kubelet.get_pod(name)
    return pod if is_running(pod) else None


def _file_has(path: str, text: str) -> bool:
    try:
        with open(path) as handle:
            return text in handle.read()
    except FileNotFoundError:
        return False


async def test_host_port_is_reachable_from_the_host(kubelet: KubeletProcess) -> None:
    port = free_port()
    await kubelet.submit(make_pod("hostport", _web("on-host-port", port)))
    pod = await eventually(lambda: _running(kubelet, "hostport"), what="pod running")
    # On the pod network like any pod; the kubelet publishes the port on the node IP.
    assert ipaddress.ip_address(pod.status.pod_ip) in ipaddress.ip_network(DEFAULT_POD_CIDR)
    assert "on-host-port" in await eventually(
        lambda: _fetch(f"http://127.0.0.1:{port}/index.html"), what=f"127.0.0.1:{port} answering"
    )
    assert f"127.0.0.1 . tcp . {port} : goto" in _hostports_table(kubelet.node)
    # The node's own connections from loopback reach the bridge through route_localnet.
    route_localnet = Path(f"/proc/sys/net/ipv4/conf/{DEFAULT_BRIDGE}/route_localnet")
    assert (await asyncio.to_thread(route_localnet.read_text)).strip() == "1"
    assert not _bindable("127.0.0.1", port)  # held by the kubelet: no process can take it

    await kubelet.delete("hostport")
    await eventually(lambda: not _hostports_table(kubelet.node), what="the node's host ports table gone")
    # Let go once the table without it is written (just after we see it gone).
    await eventually(lambda: _bindable("127.0.0.1", port), what="the port let go")
    assert await _fetch(f"http://127.0.0.1:{port}/index.html") is None


async def test_exited_container_is_restarted_under_always(kubelet: KubeletProcess) -> None:
    await kubelet.submit(make_pod("crasher", container("main", "sh", "-c", "sleep 1; exit 3")))

    async def restarted_twice() -> pod_pb2.ContainerStatus | None:
        status = container_status(await kubelet.get_pod("crasher"), "main")
        return status if status is not None and status.restart_count >= 2 else None

    status = await eventually(restarted_twice, what="two restarts")
    assert status.last_state.terminated.exit_code == 3
    assert status.last_state.terminated.reason == "Error"
    pod = await kubelet.get_pod("crasher")
    assert pod.status.phase == "Running"  # Always: the pod is restarting, not over
    # Old attempts are garbage-collected: the newest and one dead one before it.
    attempts = [c for c in node_containers(kubelet.node) if c["Labels"]["io.kybernetes.container.name"] == "main"]
    assert len(attempts) <= 2


async def test_exited_container_is_not_restarted_under_never(kubelet: KubeletProcess) -> None:
    await kubelet.submit(make_pod("once", container("main", "sh", "-c", "exit 4"), restart_policy="Never"))

    async def failed() -> pod_pb2.Pod | None:
        pod = await kubelet.get_pod("once")
        return pod if pod is not None and pod.status.phase == "Failed" else None

    pod = await eventually(failed, what="pod Failed")
    status = container_status(pod, "main")
    assert status.state.terminated.exit_code == 4
    assert status.restart_count == 0
    # Longer than the restart back-off (1s here) and a resync: a fixed wait, as a restart not made leaves no event.
    await asyncio.sleep(3)
    pod = await kubelet.get_pod("once")
    assert container_status(pod, "main").restart_count == 0
    # A pod that is over keeps no running sandbox.
    assert not [c for c in node_containers(kubelet.node, all=False)]


async def test_completed_pod_succeeds_under_on_failure(kubelet: KubeletProcess) -> None:
    await kubelet.submit(make_pod("job", container("main", "sh", "-c", "exit 0"), restart_policy="OnFailure"))

    async def succeeded() -> pod_pb2.Pod | None:
        pod = await kubelet.get_pod("job")
        return pod if pod is not None and pod.status.phase == "Succeeded" else None

    pod = await eventually(succeeded, what="pod Succeeded")
    assert container_status(pod, "main").state.terminated.reason == "Completed"


async def test_changed_image_or_command_restarts_the_container(kubelet: KubeletProcess) -> None:
    pod = make_pod("change", sleeper("main"))
    await kubelet.submit(pod)
    first = await eventually(lambda: _running(kubelet, "change"), what="pod running")
    first_id = container_status(first, "main").container_id

    pod.spec.containers[0].command[:] = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 2; done"]
    await kubelet.submit(pod)

    async def replaced() -> pod_pb2.Pod | None:
        current = await kubelet.get_pod("change")
        status = container_status(current, "main")
        if status is not None and status.container_id != first_id and status.state.HasField("running"):
            return current
        return None

    second = await eventually(replaced, what="container replaced")
    assert container_status(second, "main").restart_count == 1
    # The sandbox did not change: the pod keeps its IP.
    assert second.status.pod_ip == first.status.pod_ip
    running = [
        c for c in node_containers(kubelet.node, all=False) if c["Labels"]["io.kybernetes.container.name"] == "main"
    ]
    assert len(running) == 1
    assert "sleep 2" in running[0]["Command"]


async def test_host_path_memory_volume_env_and_limits(kubelet: KubeletProcess, tmp_path) -> None:
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    (host_dir / "from-host").write_text("hello")
    main = container(
        "main", "sh", "-c",
        "trap 'exit 0' TERM; cat /host/from-host > /host/copied; echo $GREETING > /host/env; pwd > /host/pwd; "
        "grep ' /fast ' /proc/mounts > /host/mounts; while true; do sleep 1; done",
        env=[pod_pb2.EnvVar(name="GREETING", value="hi there")], working_dir="/fast",
        volume_mounts=[pod_pb2.VolumeMount(name="host", mount_path="/host"),
                       pod_pb2.VolumeMount(name="fast", mount_path="/fast")],
    )
    main.resources.limits.update({"cpu": "250m", "memory": "32Mi"})
    volumes = [
        pod_pb2.Volume(name="host", host_path=pod_pb2.HostPathVolumeSource(path=str(host_dir), type="Directory")),
        pod_pb2.Volume(name="fast", empty_dir=pod_pb2.EmptyDirVolumeSource(medium="Memory")),
    ]
    submitted = await kubelet.submit(make_pod("vols", main, volumes=volumes))
    await eventually(lambda: _running(kubelet, "vols"), what="pod running")
    await eventually(lambda: _file_has(str(host_dir / "mounts"), "tmpfs"), what="memory volume is a tmpfs")
    assert (host_dir / "copied").read_text() == "hello"
    assert (host_dir / "env").read_text() == "hi there\n"
    assert (host_dir / "pwd").read_text() == "/fast\n"
    fast_dir = os.path.join(kubelet.root_dir, "pods", submitted.metadata.uid, "volumes", "fast")
    assert await asyncio.to_thread(os.path.ismount, fast_dir)
    [app] = [c for c in node_containers(kubelet.node) if c["Labels"]["io.kybernetes.container.name"] == "main"]
    client = docker.from_env()
    try:
        host_config = client.api.inspect_container(app["Id"])["HostConfig"]
    finally:
        client.close()
    assert host_config["NanoCpus"] == 250_000_000 and host_config["Memory"] == 32 * 2**20

    await kubelet.delete("vols")
    await eventually(lambda: _gone(kubelet, fast_dir), what="pod removed and its tmpfs unmounted")
    assert (host_dir / "from-host").exists()  # a hostPath is never deleted


async def test_seccomp_is_unconfined_unless_the_kubelet_asks_for_dockers_default(
    kubelet: KubeletProcess, tmp_path
) -> None:
    """As Kubernetes' kubelet: Unconfined by default, Docker's profile with --seccomp-default."""

    def reporter(out: str) -> pod_pb2.Pod:
        main = container(
            "main", "sh", "-c",
            "trap 'exit 0' TERM; grep Seccomp: /proc/self/status > /out/seccomp; while true; do sleep 1; done",
            volume_mounts=[pod_pb2.VolumeMount(name="out", mount_path="/out")],
        )
        volume = pod_pb2.Volume(name="out", host_path=pod_pb2.HostPathVolumeSource(path=out, type="Directory"))
        return make_pod("seccomp", main, volumes=[volume])

    default_out, strict_out = tmp_path / "default", tmp_path / "strict"
    default_out.mkdir()
    strict_out.mkdir()
    strict = KubeletProcess(unique_node(), "--seccomp-default")
    try:
        await kubelet.submit(reporter(str(default_out)))
        await strict.submit(reporter(str(strict_out)))
        # /proc/self/status: 0 is no filter, 2 is a filter in force.
        await eventually(lambda: _file_has(str(default_out / "seccomp"), "Seccomp:\t0"), what="an unconfined container")
        await eventually(lambda: _file_has(str(strict_out / "seccomp"), "Seccomp:\t2"), what="a filtered container")
    finally:
        strict.cleanup()


def _gone(kubelet: KubeletProcess, path: str) -> bool:
    return not node_containers(kubelet.node) and not os.path.exists(path)


async def test_deleted_pod_leaves_no_container_or_directory(kubelet: KubeletProcess) -> None:
    volume = pod_pb2.Volume(name="scratch", empty_dir=pod_pb2.EmptyDirVolumeSource())
    main = sleeper("main")
    main.volume_mounts.add(name="scratch", mount_path="/scratch")
    submitted = await kubelet.submit(make_pod("doomed", main, sleeper("side"), volumes=[volume]))
    await eventually(lambda: _running(kubelet, "doomed"), what="pod running")
    pod_dir = os.path.join(kubelet.root_dir, "pods", submitted.metadata.uid)
    assert await asyncio.to_thread(os.path.isdir, pod_dir)

    deleted = await kubelet.delete("doomed")
    assert deleted.metadata.uid == submitted.metadata.uid

    def gone() -> bool:
        return not node_containers(kubelet.node) and not os.path.exists(pod_dir)

    await eventually(gone, what="containers and pod directory removed")
    assert await kubelet.get_pod("doomed") is None


async def test_missing_image_and_bad_command_are_reported_and_others_keep_running(kubelet: KubeletProcess) -> None:
    await kubelet.submit(make_pod("good", sleeper("main")))
    await kubelet.submit(make_pod("noimage", container("main", "true", image="kybernetes/no-such-image:never")))
    await kubelet.submit(make_pod("badcmd", container("main", "/no/such/command"), restart_policy="Never"))

    async def image_reported() -> pod_pb2.ContainerStatus | None:
        status = container_status(await kubelet.get_pod("noimage"), "main")
        return status if status is not None and status.state.waiting.reason == "ErrImageNeverPull" else None

    status = await eventually(image_reported, what="ErrImageNeverPull")
    assert "kybernetes/no-such-image:never" in status.state.waiting.message
    assert (await kubelet.get_pod("noimage")).status.phase == "Pending"

    async def command_reported() -> pod_pb2.Pod | None:
        pod = await kubelet.get_pod("badcmd")
        return pod if pod is not None and pod.status.phase == "Failed" else None

    pod = await eventually(command_reported, what="bad command reported")
    terminated = container_status(pod, "main").state.terminated
    assert terminated.exit_code == 127
    assert terminated.reason == "ContainerCannotRun"
    assert "/no/such/command" in terminated.message

    good = await kubelet.get_pod("good")
    assert is_running(good) and container_status(good, "main").restart_count == 0
    assert kubelet.alive()


async def _reported(kubelet: KubeletProcess, name: str, text: str) -> pod_pb2.Pod | None:
    pod = await kubelet.get_pod(name)
    return pod if pod is not None and text in pod.status.message else None


async def test_host_port_taken_is_reported(kubelet: KubeletProcess) -> None:
    port = free_port()
    web = container(
        "main", "sh", "-c", "exec httpd -f -p 80 -h /", ports=[pod_pb2.ContainerPort(container_port=80, host_port=port)]
    )
    await kubelet.submit(make_pod("first", web))
    await eventually(lambda: _running(kubelet, "first"), what="first pod running")
    await kubelet.submit(make_pod("second", web))

    # As Kubernetes' kubelet reports a host port it cannot open.
    message = (
        f"cannot open hostport {port} for pod second-{kubelet.node}_default: "
        f"listen tcp 127.0.0.1:{port}: bind: address already in use"
    )
    pod = await eventually(lambda: _reported(kubelet, "second", message), what="port conflict reported")
    assert pod.status.phase == "Pending"
    assert pod.status.reason == "CreatePodSandboxError"
    assert container_status(pod, "main").state.waiting.reason == "ContainerCreating"
    assert is_running(await kubelet.get_pod("first"))
    # Once the port is free, the pod starts cleanly: what was made for the
    # sandboxes that failed is never started, nor counted as a restart.
    await kubelet.delete("first")
    pod = await eventually(lambda: _running(kubelet, "second"), what="second pod running once the port is free")
    assert container_status(pod, "main").restart_count == 0
    second = [c for c in node_containers(kubelet.node) if c["Labels"].get("io.kybernetes.pod.uid") == pod.metadata.uid]
    assert sorted(c["State"] for c in second) == ["running", "running"], second


async def test_host_port_held_by_another_process_is_reported(kubelet: KubeletProcess) -> None:
    port = free_port()
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        submitted = await kubelet.submit(make_pod("blocked", _web("unblocked", port)))
        pod = await eventually(
            lambda: _reported(kubelet, "blocked", f"listen tcp 127.0.0.1:{port}: bind: address already in use"),
            what="the taken port reported",
        )
        assert pod.status.phase == "Pending" and pod.status.reason == "CreatePodSandboxError"
        # Refused before Docker made anything for it.
        assert not [c for c in node_containers(kubelet.node)
                    if c["Labels"].get("io.kybernetes.pod.uid") == submitted.metadata.uid]
    finally:
        holder.close()
    await eventually(lambda: _running(kubelet, "blocked"), what="pod running once the port is free")
    assert "unblocked" in await eventually(
        lambda: _fetch(f"http://127.0.0.1:{port}/index.html"), what="the host port answering"
    )


async def test_the_same_host_port_on_two_simulated_nodes(node_name: str) -> None:
    """Nodes 127.0.0.2 and 127.0.0.3 share the host's network namespace: each publishes
    the port on its own address only."""
    port = free_port()
    kubelets = [KubeletProcess(node_name, node_ip="127.0.0.2"), KubeletProcess(unique_node(), node_ip="127.0.0.3")]
    try:
        for kubelet in kubelets:
            await kubelet.submit(make_pod("web", _web(f"served-on-{kubelet.node}", port)))
        for kubelet in kubelets:
            await eventually(functools.partial(_running, kubelet, "web"), what=f"pod running on {kubelet.node}")
            url = f"http://{kubelet.node_ip}:{port}/index.html"
            reply = await eventually(functools.partial(_fetch, url), what=f"{kubelet.node_ip}:{port} answering")
            assert f"served-on-{kubelet.node}" in reply
            assert f"{kubelet.node_ip} . tcp . {port} : goto" in _hostports_table(kubelet.node)
        assert await _fetch(f"http://127.0.0.1:{port}/index.html") is None  # neither node's address
    finally:
        for kubelet in kubelets:
            kubelet.cleanup()
            _delete_hostports_table(kubelet.node)


def _exec(node: str, pod_name: str, container_name: str, *argv: str) -> tuple[int, str]:
    """Runs a command in one of the pod's containers: (exit code, output)."""
    client = docker_client()
    try:
        for summary in node_containers(node, all=False):
            labels = summary["Labels"]
            if (labels["io.kybernetes.pod.name"], labels["io.kybernetes.container.name"]) == (pod_name, container_name):
                code, output = client.containers.get(summary["Id"]).exec_run(list(argv))
                return code, output.decode(errors="replace")
        raise AssertionError(f"no running container {container_name} of {pod_name}")
    finally:
        client.close()


async def test_a_pod_reaches_its_own_host_port(kubelet: KubeletProcess) -> None:
    """Hairpin: the pod's packets come back to it DNATed, and masqueraded (it would answer
    itself directly otherwise). The port is published on its hostIP only, here the node's
    address on the pod bridge (the pod cannot reach the node's loopback address)."""
    gateway = str(next(ipaddress.ip_network(DEFAULT_POD_CIDR).hosts()))
    port = free_port()
    await kubelet.submit(make_pod("hairpin", _web("hairpinned", port, host_ip=gateway)))
    await eventually(lambda: _running(kubelet, "hairpin"), what="pod running")

    async def fetched_by_itself() -> str | None:
        code, output = await asyncio.to_thread(
            _exec, kubelet.node, f"hairpin-{kubelet.node}", "web",
            # busybox's own timeout: its wget -T crashes (SIGSEGV) in this image.
            "timeout", "5", "wget", "-q", "-O", "-", f"http://{gateway}:{port}/index.html",
        )
        return output if code == 0 else None

    assert "hairpinned" in await eventually(fetched_by_itself, what="the pod reaching its own host port")
    assert "hairpinned" in await eventually(lambda: _fetch(f"http://{gateway}:{port}/index.html"), what="the host")
    assert await _fetch(f"http://127.0.0.1:{port}/index.html") is None  # only on its hostIP


async def test_the_table_follows_the_pods(kubelet: KubeletProcess) -> None:
    first, second = free_port(2), 0
    second = first + 1
    await kubelet.submit(make_pod("one", _web("one", first)))
    await kubelet.submit(make_pod("two", _web("two", second)))
    for name in ("one", "two"):
        await eventually(functools.partial(_running, kubelet, name), what=f"pod {name} running")
    table = _hostports_table(kubelet.node)
    assert f"127.0.0.1 . tcp . {first} : goto" in table and f"127.0.0.1 . tcp . {second} : goto" in table

    await kubelet.delete("one")
    await eventually(lambda: f"tcp . {first} :" not in _hostports_table(kubelet.node), what="pod one's rules gone")
    assert f"127.0.0.1 . tcp . {second} : goto" in _hostports_table(kubelet.node)
    assert "two" in await eventually(lambda: _fetch(f"http://127.0.0.1:{second}/index.html"), what="two answering")
    await eventually(lambda: _bindable("127.0.0.1", first), what="pod one's port let go")

    await kubelet.delete("two")
    await eventually(lambda: not _hostports_table(kubelet.node), what="the table gone with the last host port")


async def test_a_restarted_kubelet_keeps_the_host_ports_of_the_pods_it_adopts(kubelet: KubeletProcess) -> None:
    port = free_port()
    await kubelet.submit(make_pod("steady", _web("steady", port)))
    await eventually(lambda: _running(kubelet, "steady"), what="pod running")
    url = f"http://127.0.0.1:{port}/index.html"
    assert "steady" in await eventually(lambda: _fetch(url), what="the host port answering")

    kubelet.stop()
    # The table stays while no kubelet runs: the pod is still reachable on its host port.
    assert f"127.0.0.1 . tcp . {port} : goto" in _hostports_table(kubelet.node)
    assert "steady" in (await _fetch(url) or "")
    kubelet.start()
    # The new kubelet rewrites the table from the sandbox it adopts, and holds the port again.
    await eventually(lambda: not _bindable("127.0.0.1", port), what="the port held again")
    assert "steady" in (await _fetch(url) or "")
    await kubelet.delete("steady")
    await eventually(lambda: not _hostports_table(kubelet.node), what="the table gone")


async def test_submit_rejects_an_invalid_pod(kubelet: KubeletProcess) -> None:
    bad = make_pod("bad", container("Not_A_Name", "true"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await kubelet.submit(bad)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.containers[0].name" in raised.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await kubelet.delete("never-submitted")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND

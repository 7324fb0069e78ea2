"""The kubelet applies a pod's securityContext and host namespaces on the real
Docker daemon, as a user inside the container sees them: `id`, a read-only
root, /proc/self/status (capabilities, no_new_privs, seccomp), the host's
network, PID and IPC namespaces, and runAsNonRoot refusing a root image."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from kybernetes.v1 import pod_pb2
from tests.integration.kubelet_helpers import (
    KubeletProcess,
    container,
    container_status,
    docker_client,
    is_running,
    make_pod,
    node_containers,
    unique_node,
)
from tests.polling import eventually
from tools.processes import free_port

pytestmark = pytest.mark.docker

OUT = "/out"
# Linux capability bits, as /proc/<pid>/status shows them.
CAP_CHOWN = 0
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13


def _reporter(script: str, *, name: str = "main", **fields: Any) -> pod_pb2.Container:
    """A container that runs `script` (its output into /out/result, written whole),
    then waits to be stopped."""
    command = (
        f"({script}) > {OUT}/partial 2>&1; mv {OUT}/partial {OUT}/result; "
        "trap 'exit 0' TERM; while true; do sleep 1; done"
    )
    return container(
        name, "sh", "-c", command, volume_mounts=[pod_pb2.VolumeMount(name="out", mount_path=OUT)], **fields
    )


def _pod(name: str, *containers: pod_pb2.Container, **spec: Any) -> pod_pb2.Pod:
    pod = make_pod(name, *containers, volumes=[pod_pb2.Volume(name="out", empty_dir=pod_pb2.EmptyDirVolumeSource())])
    for field, value in spec.items():
        if field == "security_context":
            pod.spec.security_context.CopyFrom(value)
        else:
            setattr(pod.spec, field, value)
    return pod


def _out_dir(kubelet: KubeletProcess, submitted: pod_pb2.Pod) -> Path:
    return Path(kubelet.root_dir) / "pods" / submitted.metadata.uid / "volumes" / "out"


async def _result(kubelet: KubeletProcess, submitted: pod_pb2.Pod) -> str:
    path = _out_dir(kubelet, submitted) / "result"

    def read() -> str | None:
        try:
            return path.read_text()
        except FileNotFoundError:
            return None

    return await eventually(read, what=f"{path} written")


async def _running(kubelet: KubeletProcess, name: str) -> pod_pb2.Pod | None:
    pod = await kubelet.get_pod(name)
    return pod if is_running(pod) else None


def _status_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _inspect(kubelet: KubeletProcess, container_name: str) -> dict[str, Any]:
    client = docker_client()
    try:
        (summary,) = [
            c for c in node_containers(kubelet.node) if c["Labels"]["io.kybernetes.container.name"] == container_name
        ]
        return client.api.inspect_container(summary["Id"])
    finally:
        client.close()


async def test_run_as_user_groups_and_fs_group(kubelet: KubeletProcess) -> None:
    context = pod_pb2.PodSecurityContext(run_as_user=1000, run_as_group=3000, supplemental_groups=[4000], fs_group=2000)
    main = _reporter(f"id -u; id -g; id -G; touch {OUT}/made-by-main; mkdir {OUT}/dir")
    # A container's own user overrides the pod's; the pod's group and groups stay.
    other = _reporter("id -u; id -g; id -G", name="other", security_context=pod_pb2.SecurityContext(run_as_user=1001))
    other.volume_mounts[0].sub_path = "other"
    submitted = await kubelet.submit(_pod("ids", main, other, security_context=context))

    uid, gid, groups = (await _result(kubelet, submitted)).split("\n")[:3]
    assert (uid, gid) == ("1000", "3000")
    assert set(groups.split()) == {"3000", "4000", "2000"}
    out = _out_dir(kubelet, submitted)
    other_out = (await eventually(lambda: _read(out / "other" / "result"), what="other's result")).split("\n")
    assert other_out[:2] == ["1001", "3000"] and set(other_out[2].split()) == {"3000", "4000", "2000"}
    # fsGroup: the emptyDir is the group's (setgid), so what the containers make is too.
    assert out.stat().st_gid == 2000 and out.stat().st_mode & 0o2070 == 0o2070
    assert (out / "made-by-main").stat().st_gid == 2000
    assert (out / "dir").stat().st_gid == 2000 and (out / "dir").stat().st_mode & 0o2000
    assert (out / "other").stat().st_gid == 2000  # the subPath directory the kubelet made
    # The pause container runs as the pod's user too, and keeps the pod running.
    assert _inspect(kubelet, "POD")["Config"]["User"] == "1000:3000"
    await eventually(lambda: _running(kubelet, "ids"), what="pod running")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


async def test_read_only_root_filesystem(kubelet: KubeletProcess) -> None:
    context = pod_pb2.SecurityContext(read_only_root_filesystem=True)
    main = _reporter(
        "touch /probe && echo wrote-root; echo wrote-volume > /out/ok && cat /out/ok", security_context=context
    )
    submitted = await kubelet.submit(_pod("readonly", main))
    result = await _result(kubelet, submitted)
    assert "Read-only file system" in result and "wrote-root" not in result
    assert "wrote-volume" in result  # volumes stay writable


async def test_capabilities_and_no_new_privileges(kubelet: KubeletProcess) -> None:
    context = pod_pb2.SecurityContext(
        capabilities=pod_pb2.Capabilities(add=["NET_ADMIN"], drop=["CAP_NET_RAW", "CHOWN"]),
        allow_privilege_escalation=False,
    )
    plain = _reporter("grep -E '^(CapEff|NoNewPrivs):' /proc/self/status", name="plain")
    plain.volume_mounts[0].sub_path = "plain"
    main = _reporter("grep -E '^(CapEff|NoNewPrivs):' /proc/self/status", security_context=context)
    submitted = await kubelet.submit(_pod("caps", main, plain))

    fields = _status_fields(await _result(kubelet, submitted))
    effective = int(fields["CapEff"], 16)
    assert not effective & (1 << CAP_NET_RAW) and not effective & (1 << CAP_CHOWN)
    assert effective & (1 << CAP_NET_ADMIN)
    assert fields["NoNewPrivs"] == "1"
    # The same image with no securityContext: Docker's default set, privileges may be gained.
    default = _status_fields(await eventually(lambda: _read(_out_dir(kubelet, submitted) / "plain" / "result")))
    default_caps = int(default["CapEff"], 16)
    assert default_caps & (1 << CAP_NET_RAW) and default_caps & (1 << CAP_CHOWN)
    assert not default_caps & (1 << CAP_NET_ADMIN)
    assert default["NoNewPrivs"] == "0"


async def test_drop_all_as_a_non_root_user_leaves_no_capability(kubelet: KubeletProcess) -> None:
    context = pod_pb2.SecurityContext(
        capabilities=pod_pb2.Capabilities(drop=["ALL"]),
        run_as_user=1000,
        run_as_non_root=True,
        allow_privilege_escalation=False,
    )
    submitted = await kubelet.submit(
        _pod("restricted", _reporter("grep -E '^Cap(Eff|Bnd):' /proc/self/status", security_context=context))
    )
    fields = _status_fields(await _result(kubelet, submitted))
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0


async def test_seccomp_profiles(kubelet: KubeletProcess) -> None:
    # A Localhost profile from <root-dir>/seccomp: everything allowed but mkdir.
    profiles = Path(kubelet.root_dir) / "seccomp" / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "no-mkdir.json").write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}],
    }))  # fmt: skip
    script = "grep '^Seccomp:' /proc/self/status; mkdir /made && echo mkdir-ok || echo mkdir-refused"

    def reporter(name: str, kind: str = "", profile: str = "") -> pod_pb2.Container:
        fields: dict[str, Any] = {}
        if kind:
            seccomp = pod_pb2.SeccompProfile(type=kind, localhost_profile=profile)
            fields["security_context"] = pod_pb2.SecurityContext(seccomp_profile=seccomp)
        spec = _reporter(script, name=name, **fields)
        spec.volume_mounts[0].sub_path = name
        return spec

    pod = _pod(
        "seccomp",
        reporter("default"),
        reporter("runtime", "RuntimeDefault"),
        reporter("unconfined", "Unconfined"),
        reporter("localhost", "Localhost", "profiles/no-mkdir.json"),
        # The pod's profile, for the containers that name none (here: "default").
        security_context=pod_pb2.PodSecurityContext(seccomp_profile=pod_pb2.SeccompProfile(type="RuntimeDefault")),
    )
    submitted = await kubelet.submit(pod)
    out = _out_dir(kubelet, submitted)
    results = {}
    for name in ("default", "runtime", "unconfined", "localhost"):
        results[name] = await eventually(lambda name=name: _read(out / name / "result"), what=f"{name} result")
    # /proc/self/status: 0 is no filter, 2 is a filter in force.
    assert "Seccomp:\t2" in results["default"] and "mkdir-ok" in results["default"]
    assert "Seccomp:\t2" in results["runtime"] and "mkdir-ok" in results["runtime"]
    assert "Seccomp:\t0" in results["unconfined"]
    assert "Seccomp:\t2" in results["localhost"] and "mkdir-refused" in results["localhost"]


async def test_a_missing_localhost_profile_is_a_create_container_error(kubelet: KubeletProcess) -> None:
    seccomp = pod_pb2.SeccompProfile(type="Localhost", localhost_profile="absent.json")
    main = _reporter("true", security_context=pod_pb2.SecurityContext(seccomp_profile=seccomp))
    await kubelet.submit(_pod("noprofile", main))

    async def waiting() -> pod_pb2.ContainerStateWaiting | None:
        status = container_status(await kubelet.get_pod("noprofile"), "main")
        return status.state.waiting if status is not None and status.state.waiting.reason else None

    state = await eventually(waiting, what="the container waiting")
    assert state.reason == "CreateContainerError"
    assert "cannot load seccomp profile" in state.message and "absent.json" in state.message


async def test_run_as_non_root_refuses_a_root_image(kubelet: KubeletProcess) -> None:
    refused = _reporter("id -u", security_context=pod_pb2.SecurityContext(run_as_non_root=True))
    await kubelet.submit(_pod("rootimage", refused))

    async def waiting() -> pod_pb2.ContainerStatus | None:
        status = container_status(await kubelet.get_pod("rootimage"), "main")
        return status if status is not None and status.state.waiting.reason == "CreateContainerConfigError" else None

    status = await eventually(waiting, what="CreateContainerConfigError")
    assert "container has runAsNonRoot and image will run as root" in status.state.waiting.message
    assert f"rootimage-{kubelet.node}_default(" in status.state.waiting.message
    assert [c["Labels"]["io.kybernetes.container.name"] for c in node_containers(kubelet.node)] == ["POD"]

    # With a non-root user the same image runs.
    allowed = _reporter("id -u", security_context=pod_pb2.SecurityContext(run_as_non_root=True))
    submitted = await kubelet.submit(
        _pod("nonroot", allowed, security_context=pod_pb2.PodSecurityContext(run_as_user=1000))
    )
    assert (await _result(kubelet, submitted)).strip() == "1000"


async def test_host_network_pod_sees_the_hosts_interfaces_and_ports(kubelet: KubeletProcess) -> None:
    port = free_port()
    server = _reporter(
        f"cat /proc/net/dev; hostname > {OUT}/hostname; cat /etc/resolv.conf > {OUT}/resolv.conf; "
        "echo on-host-network > /index.html; "
        f"httpd -p 127.0.0.1:{port} -h /",
        ports=[pod_pb2.ContainerPort(container_port=port, host_port=port)],
    )
    submitted = await kubelet.submit(_pod("hostnet", server, host_network=True))

    interfaces = _interfaces(await _result(kubelet, submitted))
    assert interfaces == _interfaces(_read(Path("/proc/net/dev")) or "")
    assert (_read(_out_dir(kubelet, submitted) / "hostname") or "").strip() == socket.gethostname()
    # ClusterFirst on the host's network is the node's resolver (this kubelet has no cluster DNS anyway).
    assert _nameservers(_read(_out_dir(kubelet, submitted) / "resolv.conf") or "") == _nameservers(
        _read(Path("/etc/resolv.conf")) or ""
    )
    pod = await eventually(lambda: _running(kubelet, "hostnet"), what="pod running")
    assert pod.status.pod_ip == pod.status.host_ip == kubelet.node_ip
    # Its server listens on the host's own loopback.
    reply = await eventually(lambda: _fetch(port), what="the pod's server on the host's port", retry_on=(OSError,))
    assert "on-host-network" in reply
    # No address of the pod network, no veth: nothing was wired.
    assert not _pool_entries(submitted.metadata.uid)
    assert _inspect(kubelet, "POD")["HostConfig"]["NetworkMode"] == "host"


def _nameservers(resolv_conf: str) -> list[str]:
    return [line.split()[1] for line in resolv_conf.splitlines() if line.startswith("nameserver ")]


def _interfaces(proc_net_dev: str) -> set[str]:
    return {line.split(":")[0].strip() for line in proc_net_dev.splitlines() if ":" in line}


async def _fetch(port: int) -> str:
    def get() -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as connection:
            connection.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
            chunks = []
            while chunk := connection.recv(4096):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    return await asyncio.to_thread(get)


def _pool_entries(uid: str) -> list[str]:
    found = []
    for root, _, files in os.walk("/var/lib/kybernetes/networks"):
        for name in files:
            try:
                if uid in Path(root, name).read_text():
                    found.append(name)
            except OSError:
                pass
    return found


async def test_host_pid_and_host_ipc_namespaces(kubelet: KubeletProcess) -> None:
    script = "readlink /proc/self/ns/pid; readlink /proc/self/ns/ipc; readlink /proc/self/ns/net"
    shared = _reporter(script)
    submitted = await kubelet.submit(_pod("hostns", shared, host_pid=True, host_ipc=True))
    isolated = await kubelet.submit(_pod("ownns", _reporter(script)))

    pid, ipc, net = (await _result(kubelet, submitted)).split()
    assert pid == os.readlink("/proc/self/ns/pid") and ipc == os.readlink("/proc/self/ns/ipc")
    assert net != os.readlink("/proc/self/ns/net")  # hostPID and hostIPC only
    own_pid, own_ipc, _ = (await _result(kubelet, isolated)).split()
    assert own_pid != pid and own_ipc != ipc
    # The sandbox holds the host's IPC namespace and the app joins it; both are in the host's PID namespace.
    client = docker_client()
    try:
        modes = {}
        for summary in node_containers(kubelet.node):
            labels = summary["Labels"]
            if labels["io.kybernetes.pod.name"] == submitted.metadata.name:
                host_config = client.api.inspect_container(summary["Id"])["HostConfig"]
                modes[labels["io.kybernetes.container.name"]] = (host_config["PidMode"], host_config["IpcMode"])
    finally:
        client.close()
    assert modes["POD"] == ("host", "host")
    assert modes["main"][0] == "host" and modes["main"][1].startswith("container:")


def _full_capability_bounding_set() -> bool:
    """Whether this machine lets Docker give a container every capability: a
    privileged container asks for all of them, and where the daemon's bounding
    set lacks one (a sandboxed CI machine) runc cannot start it."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    bounding = int(_status_fields(Path("/proc/self/status").read_text())["CapBnd"], 16)
    return bounding == (1 << (last + 1)) - 1


async def test_privileged_container(kubelet: KubeletProcess) -> None:
    main = _reporter(
        "grep '^CapEff:' /proc/self/status; ls /dev | wc -l", security_context=pod_pb2.SecurityContext(privileged=True)
    )
    submitted = await kubelet.submit(_pod("privileged", main))

    async def created() -> dict[str, Any] | None:
        names = [c["Labels"]["io.kybernetes.container.name"] for c in node_containers(kubelet.node)]
        return _inspect(kubelet, "main") if "main" in names else None

    inspected = await eventually(created, what="the privileged container made")
    assert inspected["HostConfig"]["Privileged"] is True
    assert _inspect(kubelet, "POD")["HostConfig"]["Privileged"] is False  # the sandbox needs none of it
    if _full_capability_bounding_set():
        fields = _status_fields(await _result(kubelet, submitted))
        last = int(_read(Path("/proc/sys/kernel/cap_last_cap")) or "0")
        assert int(fields["CapEff"], 16) == (1 << (last + 1)) - 1
        return

    # Here Docker cannot start it: the pod shows Docker's reason rather than hiding it.
    async def cannot_run() -> pod_pb2.ContainerStateTerminated | None:
        status = container_status(await kubelet.get_pod("privileged"), "main")
        if status is None:
            return None
        for state in (status.state, status.last_state):
            if state.terminated.reason == "ContainerCannotRun":
                return state.terminated
        return None

    terminated = await eventually(cannot_run, what="ContainerCannotRun")
    assert "caps" in terminated.message


async def test_security_pods_are_adopted_after_a_restart_and_removed_without_a_trace(
    kubelet: KubeletProcess,
) -> None:
    context = pod_pb2.PodSecurityContext(
        run_as_user=1000, fs_group=2000, seccomp_profile=pod_pb2.SeccompProfile(type="RuntimeDefault")
    )
    hardened = pod_pb2.SecurityContext(
        capabilities=pod_pb2.Capabilities(drop=["ALL"]), read_only_root_filesystem=True,
        allow_privilege_escalation=False, run_as_non_root=True,
    )  # fmt: skip
    first = await kubelet.submit(
        _pod("hardened", _reporter("id -u", security_context=hardened), security_context=context)
    )
    second = await kubelet.submit(_pod("hostwide", _reporter("id -u"), host_network=True, host_pid=True, host_ipc=True))
    for name in ("hardened", "hostwide"):
        await eventually(lambda name=name: _running(kubelet, name), what=f"{name} running")
    before = {c["Id"] for c in node_containers(kubelet.node)}
    hostwide_ip = (await kubelet.get_pod("hostwide")).status.pod_ip

    kubelet.kill()
    kubelet.start()
    for name in ("hardened", "hostwide"):
        await eventually(lambda name=name: _running(kubelet, name), what=f"{name} adopted")
    # A few resyncs: nothing replaced or duplicated (a sync that changes nothing leaves nothing to wait on).
    await asyncio.sleep(5)
    assert {c["Id"] for c in node_containers(kubelet.node)} == before
    for name in ("hardened", "hostwide"):
        for status in (await kubelet.get_pod(name)).status.container_statuses:
            assert status.restart_count == 0
    assert (await kubelet.get_pod("hostwide")).status.pod_ip == hostwide_ip == kubelet.node_ip

    await kubelet.delete("hardened")
    await kubelet.delete("hostwide")
    pod_dirs = [Path(kubelet.root_dir) / "pods" / pod.metadata.uid for pod in (first, second)]

    def gone() -> bool:
        return not node_containers(kubelet.node) and not any(path.exists() for path in pod_dirs)

    await eventually(gone, what="both pods removed")


async def test_host_network_dns_is_the_nodes_unless_cluster_first_with_host_net() -> None:
    """As Kubernetes: ClusterFirst on the host's network means the node's resolver;
    ClusterFirstWithHostNet asks for the cluster DNS."""
    kubelet = KubeletProcess(unique_node(), "--cluster-dns", "10.96.0.10")
    try:
        plain = _pod("hostdns", _reporter("cat /etc/resolv.conf"), host_network=True)
        with_cluster = _pod("clusterdns", _reporter("cat /etc/resolv.conf"), host_network=True)
        with_cluster.spec.dns_policy = "ClusterFirstWithHostNet"
        node_resolv = _nameservers(_read(Path("/etc/resolv.conf")) or "")
        assert _nameservers(await _result(kubelet, await kubelet.submit(plain))) == node_resolv
        resolv = await _result(kubelet, await kubelet.submit(with_cluster))
        assert _nameservers(resolv) == ["10.96.0.10"]
        assert "svc.cluster.local" in resolv and "ndots:5" in resolv
    finally:
        kubelet.cleanup()

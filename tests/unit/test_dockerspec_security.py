"""securityContext and host namespaces -> Docker create arguments (pure).

Each field of a pod's or container's securityContext, the precedence of the
container's over the pod's, the runAsNonRoot decision, and what the infra
container gets."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kybernetes.v1 import pod_pb2
from services.kubelet import naming
from services.kubelet.dockerspec import (
    ContainerConfigError,
    CreateRequest,
    capability_name,
    container_request,
    effective_security_context,
    infra_request,
    localhost_profile_path,
    localhost_profiles,
    needs_image_user,
    pod_groups,
    sandbox_hash,
    verify_run_as_non_root,
)
from services.kubelet.podworker import SeccompProfileError, apply_fs_group, read_seccomp_profile
from services.kubelet.resolvconf import PodDns


def _pod(**container_security: Any) -> pod_pb2.Pod:
    pod = pod_pb2.Pod()
    pod.metadata.name = "web"
    pod.metadata.namespace = "default"
    pod.metadata.uid = "uid-1"
    main = pod.spec.containers.add(name="main", image="busybox")
    main.ports.add(container_port=8080)
    if container_security:
        main.security_context.CopyFrom(pod_pb2.SecurityContext(**container_security))
    return pod


def _app(pod: pod_pb2.Pod, **kwargs: Any) -> CreateRequest:
    return container_request(
        pod, pod.spec.containers[0], name="c", labels={}, infra_id="infra", volume_paths={}, **kwargs
    )


def _infra(pod: pod_pb2.Pod, **kwargs: Any) -> CreateRequest:
    return infra_request(pod, name="infra", labels={}, pause_image="pause", node_ip="127.0.0.1", **kwargs)


# --- a pod without any of it ------------------------------------------------------------------


def test_a_pod_without_security_settings_gets_exactly_what_it_got_before() -> None:
    pod = _pod()
    app = _app(pod)
    assert "user" not in app.container_kwargs
    assert app.host_config_kwargs["security_opt"] == ["seccomp=unconfined"]
    for key in ("privileged", "cap_add", "cap_drop", "read_only", "group_add", "pid_mode"):
        assert key not in app.host_config_kwargs
    assert app.host_config_kwargs["ipc_mode"] == "container:infra"
    infra = _infra(pod)
    assert infra.container_kwargs["hostname"] == "web" and "user" not in infra.container_kwargs
    assert infra.host_config_kwargs["ipc_mode"] == "shareable"
    for key in ("network_mode", "pid_mode", "group_add"):
        assert key not in infra.host_config_kwargs
    # Sandboxes made before these fields existed are adopted, not recreated.
    assert sandbox_hash(pod) == naming.sandbox_hash(pod)


# --- users and groups --------------------------------------------------------------------------


def test_run_as_user_alone_is_a_numeric_user_and_with_a_group_uid_colon_gid() -> None:
    assert _app(_pod(run_as_user=1000)).container_kwargs["user"] == "1000"
    assert _app(_pod(run_as_user=1000, run_as_group=3000)).container_kwargs["user"] == "1000:3000"
    assert _app(_pod(run_as_user=0)).container_kwargs["user"] == "0"


def test_run_as_group_without_a_user_is_refused_as_every_cri_runtime_does() -> None:
    with pytest.raises(ContainerConfigError, match="runAsGroup is specified without a runAsUser"):
        _app(_pod(run_as_group=3000))


def test_the_container_field_overrides_the_pod_field_one_by_one() -> None:
    pod = _pod(run_as_user=2000)
    pod.spec.security_context.run_as_user = 1000
    pod.spec.security_context.run_as_group = 3000
    assert _app(pod).container_kwargs["user"] == "2000:3000"
    effective = effective_security_context(pod, pod.spec.containers[0])
    assert (effective.run_as_user, effective.run_as_group) == (2000, 3000)
    # Only the pod's: every container gets it.
    pod.spec.containers[0].ClearField("security_context")
    assert _app(pod).container_kwargs["user"] == "1000:3000"


def test_supplemental_groups_and_fs_group_are_added_groups_of_apps_and_sandbox() -> None:
    pod = _pod()
    pod.spec.security_context.supplemental_groups.extend([5000, 6000, 5000])
    pod.spec.security_context.fs_group = 2000
    assert pod_groups(pod) == ["5000", "6000", "2000"]
    assert _app(pod).host_config_kwargs["group_add"] == ["5000", "6000", "2000"]
    assert _infra(pod).host_config_kwargs["group_add"] == ["5000", "6000", "2000"]


def test_the_sandbox_runs_as_the_pods_user_but_never_fails_on_a_group_alone() -> None:
    pod = _pod()
    pod.spec.security_context.run_as_user = 1000
    pod.spec.security_context.run_as_group = 3000
    assert _infra(pod).container_kwargs["user"] == "1000:3000"
    pod.spec.security_context.ClearField("run_as_user")
    assert "user" not in _infra(pod).container_kwargs
    # A container's own user is never the sandbox's.
    assert "user" not in _infra(_pod(run_as_user=1000)).container_kwargs


# --- runAsNonRoot --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_user", "refused"),
    [
        ("", "image will run as root"),
        ("0", "image will run as root"),
        ("root", "image will run as root"),
        ("0:0", "image will run as root"),
        ("00", "image will run as root"),
        (None, "image will run as root"),  # not read: refused rather than let through
        ("nobody", r"image has non-numeric user \(nobody\), cannot verify user is non-root"),
        ("app:app", r"image has non-numeric user \(app\)"),
        ("1000", None),
        ("1000:1000", None),
        ("65534:nogroup", None),
    ],
)
def test_run_as_non_root_checks_the_images_user(image_user: str | None, refused: str | None) -> None:
    pod = _pod(run_as_non_root=True)
    assert needs_image_user(pod, pod.spec.containers[0])
    if refused is None:
        verify_run_as_non_root(pod, pod.spec.containers[0], image_user)
        _app(pod, image_user=image_user)
        return
    with pytest.raises(ContainerConfigError, match=f"container has runAsNonRoot and {refused}") as caught:
        _app(pod, image_user=image_user)
    assert str(caught.value).endswith('(pod: "web_default(uid-1)", container: main)')


def test_run_as_non_root_with_a_user_needs_no_image_and_refuses_uid_0() -> None:
    pod = _pod(run_as_non_root=True, run_as_user=1000)
    assert not needs_image_user(pod, pod.spec.containers[0])
    assert _app(pod).container_kwargs["user"] == "1000"
    pod = _pod(run_as_non_root=True, run_as_user=0)
    with pytest.raises(ContainerConfigError, match="container's runAsUser breaks non-root policy"):
        _app(pod, image_user="1000")


def test_run_as_non_root_comes_from_the_pod_and_a_container_may_turn_it_off() -> None:
    pod = _pod()
    pod.spec.security_context.run_as_non_root = True
    assert needs_image_user(pod, pod.spec.containers[0])
    with pytest.raises(ContainerConfigError, match="image will run as root"):
        _app(pod, image_user="")
    pod.spec.containers[0].security_context.run_as_non_root = False
    assert not needs_image_user(pod, pod.spec.containers[0])
    _app(pod, image_user="")
    # The pod's runAsUser satisfies a container's runAsNonRoot.
    pod = _pod(run_as_non_root=True)
    pod.spec.security_context.run_as_user = 1000
    assert not needs_image_user(pod, pod.spec.containers[0])
    assert _app(pod).container_kwargs["user"] == "1000"


def test_without_run_as_non_root_the_image_is_never_asked() -> None:
    pod = _pod(run_as_user=0)
    assert not needs_image_user(pod, pod.spec.containers[0])
    verify_run_as_non_root(pod, pod.spec.containers[0], None)


# --- capabilities, privileged, read-only root, no_new_privs ---------------------------------------


def test_capabilities_are_added_and_dropped_with_the_cap_prefix() -> None:
    pod = _pod(capabilities=pod_pb2.Capabilities(add=["NET_ADMIN", "CAP_SYS_TIME"], drop=["ALL"]))
    host = _app(pod).host_config_kwargs
    assert host["cap_add"] == ["CAP_NET_ADMIN", "CAP_SYS_TIME"]
    assert host["cap_drop"] == ["ALL"]
    assert capability_name("net_raw") == "CAP_NET_RAW" and capability_name("all") == "ALL"


def test_privileged_read_only_root_and_no_privilege_escalation() -> None:
    assert _app(_pod(privileged=True)).host_config_kwargs["privileged"] is True
    assert "privileged" not in _app(_pod(privileged=False)).host_config_kwargs
    assert _app(_pod(read_only_root_filesystem=True)).host_config_kwargs["read_only"] is True
    assert "read_only" not in _app(_pod(read_only_root_filesystem=False)).host_config_kwargs
    host = _app(_pod(allow_privilege_escalation=False)).host_config_kwargs
    assert host["security_opt"] == ["seccomp=unconfined", "no-new-privileges"]
    # Only an explicit false sets no_new_privs (Kubernetes' AddNoNewPrivileges).
    assert _app(_pod(allow_privilege_escalation=True)).host_config_kwargs["security_opt"] == ["seccomp=unconfined"]
    assert _app(_pod(run_as_non_root=True), image_user="1000").host_config_kwargs["security_opt"] == [
        "seccomp=unconfined"
    ]


def test_a_privileged_container_does_not_make_the_sandbox_privileged() -> None:
    assert "privileged" not in _infra(_pod(privileged=True)).host_config_kwargs


# --- seccomp -------------------------------------------------------------------------------------


def _seccomp(kind: str, profile: str = "") -> pod_pb2.SeccompProfile:
    return pod_pb2.SeccompProfile(type=kind, localhost_profile=profile)


@pytest.mark.parametrize("runtime_default", [False, True])
def test_seccomp_runtime_default_and_unconfined_whatever_the_kubelets_default(runtime_default: bool) -> None:
    kwargs = {"runtime_default_seccomp": runtime_default}
    assert _app(_pod(seccomp_profile=_seccomp("RuntimeDefault")), **kwargs).host_config_kwargs["security_opt"] is None
    unconfined = _app(_pod(seccomp_profile=_seccomp("Unconfined")), **kwargs)
    assert unconfined.host_config_kwargs["security_opt"] == ["seccomp=unconfined"]
    # Unset: the kubelet's --seccomp-default.
    unset = _app(_pod(), **kwargs).host_config_kwargs["security_opt"]
    assert unset == (None if runtime_default else ["seccomp=unconfined"])


def test_seccomp_localhost_passes_the_profile_json_read_by_the_kubelet() -> None:
    profile = json.dumps({"defaultAction": "SCMP_ACT_ALLOW"})
    pod = _pod(seccomp_profile=_seccomp("Localhost", "profiles/allow.json"))
    assert localhost_profiles(pod, pod.spec.containers[0]) == ["profiles/allow.json"]
    request = _app(pod, seccomp_profiles={"profiles/allow.json": profile})
    assert request.host_config_kwargs["security_opt"] == [f"seccomp={profile}"]
    with pytest.raises(ContainerConfigError, match="was not loaded"):
        _app(pod)
    assert localhost_profile_path("/var/lib/kubelet", "profiles/allow.json") == (
        "/var/lib/kubelet/seccomp/profiles/allow.json"
    )
    for escaping in ("/etc/passwd", "../x.json", "a/../../x.json", ""):
        with pytest.raises(ContainerConfigError, match="relative path inside"):
            localhost_profile_path("/var/lib/kubelet", escaping)


def test_seccomp_container_profile_overrides_the_pods() -> None:
    pod = _pod(seccomp_profile=_seccomp("Unconfined"))
    pod.spec.security_context.seccomp_profile.type = "RuntimeDefault"
    assert _app(pod).host_config_kwargs["security_opt"] == ["seccomp=unconfined"]
    pod.spec.containers[0].ClearField("security_context")
    assert _app(pod).host_config_kwargs["security_opt"] is None
    assert localhost_profiles(pod, pod.spec.containers[0]) == []


def test_the_sandbox_takes_the_pods_seccomp_profile_and_docker_default_for_a_localhost_one() -> None:
    pod = _pod(seccomp_profile=_seccomp("Unconfined"))
    assert _infra(pod).host_config_kwargs["security_opt"] == ["seccomp=unconfined"]  # the kubelet's default
    pod.spec.security_context.seccomp_profile.type = "RuntimeDefault"
    assert _infra(pod).host_config_kwargs["security_opt"] is None
    pod.spec.security_context.seccomp_profile.CopyFrom(_seccomp("Localhost", "app.json"))
    assert _infra(pod).host_config_kwargs["security_opt"] is None
    pod.spec.security_context.seccomp_profile.CopyFrom(_seccomp("Unconfined"))
    assert _infra(pod, runtime_default_seccomp=True).host_config_kwargs["security_opt"] == ["seccomp=unconfined"]


# --- host namespaces ------------------------------------------------------------------------------


def test_host_network_puts_the_sandbox_on_the_hosts_network_with_nothing_to_publish() -> None:
    pod = _pod()
    pod.spec.host_network = True
    pod.spec.containers[0].ports[0].host_port = 8080
    infra = _infra(pod, network_disabled=True)
    assert infra.host_config_kwargs["network_mode"] == "host"
    assert infra.host_config_kwargs["port_bindings"] is None and infra.container_kwargs["ports"] is None
    assert infra.container_kwargs["network_disabled"] is None  # never the kubelet's pod network
    assert infra.container_kwargs["hostname"] is None  # the node's, as Kubernetes leaves it
    assert infra.host_config_kwargs["ipc_mode"] == "shareable" and "pid_mode" not in infra.host_config_kwargs
    # Its DNS is Docker's to write, as on Docker's bridge.
    dns = PodDns(("10.0.0.10",), ("svc.cluster.local",), ("ndots:5",))
    assert _infra(pod, dns=dns).host_config_kwargs["dns"] == ["10.0.0.10"]
    # The apps join it as always.
    assert _app(pod).host_config_kwargs["network_mode"] == "container:infra"


def test_host_pid_and_host_ipc() -> None:
    pod = _pod()
    pod.spec.host_pid = True
    pod.spec.host_ipc = True
    infra, app = _infra(pod), _app(pod)
    assert infra.host_config_kwargs["pid_mode"] == "host" and app.host_config_kwargs["pid_mode"] == "host"
    # The sandbox holds the host's IPC namespace; the apps join it as they join any sandbox's.
    assert infra.host_config_kwargs["ipc_mode"] == "host"
    assert app.host_config_kwargs["ipc_mode"] == "container:infra"
    assert infra.container_kwargs["hostname"] == "web"


def test_the_sandbox_hash_follows_host_namespaces_and_the_pods_security_context() -> None:
    pod = _pod()
    plain = sandbox_hash(pod)
    hashes = {plain}
    for field in ("host_network", "host_pid", "host_ipc"):
        changed = _pod()
        setattr(changed.spec, field, True)
        hashes.add(sandbox_hash(changed))
    changed = _pod()
    changed.spec.security_context.fs_group = 2000
    hashes.add(sandbox_hash(changed))
    assert len(hashes) == 5
    # A container's own security context is the container's hash, not the sandbox's.
    assert sandbox_hash(_pod(run_as_user=1000)) == plain
    assert naming.container_hash(_pod(run_as_user=1000).spec.containers[0]) != naming.container_hash(
        pod.spec.containers[0]
    )


# --- on the node: fsGroup on emptyDir volumes, Localhost profiles (podworker) ------------------


def test_fs_group_makes_an_empty_dir_the_groups_and_leaves_symlink_targets_alone(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    (volume / "sub").mkdir(parents=True)
    (volume / "sub" / "file").write_text("x")
    (volume / "sub" / "file").chmod(0o600)
    outside = tmp_path / "outside"
    outside.write_text("not the volume's")
    outside.chmod(0o600)
    (volume / "link").symlink_to(outside)
    apply_fs_group([str(volume)], 2000)
    for path, mode in ((volume, 0o2770), (volume / "sub", 0o2770), (volume / "sub" / "file", 0o660)):
        info = path.stat()
        assert info.st_gid == 2000 and info.st_mode & mode == mode, path
    assert os.lstat(volume / "link").st_gid == 2000
    assert outside.stat().st_mode & 0o777 == 0o600 and outside.stat().st_gid != 2000
    # Set up once: not walked again (what the containers make since gets the group from the setgid directory).
    (volume / "later").write_text("y")
    (volume / "later").chmod(0o600)
    apply_fs_group([str(volume)], 2000)
    assert (volume / "later").stat().st_gid == 2000 and (volume / "later").stat().st_mode & 0o777 == 0o600


def test_localhost_profiles_are_read_as_json(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    assert read_seccomp_profile(str(good)) == '{"defaultAction": "SCMP_ACT_ALLOW"}'
    bad = tmp_path / "bad.json"
    bad.write_text("defaultAction: allow")
    with pytest.raises(SeccompProfileError, match="not JSON"):
        read_seccomp_profile(str(bad))
    with pytest.raises(SeccompProfileError, match="cannot load seccomp profile .*absent.json.*No such file"):
        read_seccomp_profile(str(tmp_path / "absent.json"))

"""The control plane's static pod manifests (tools/staticpods.py), read back as the kubelet's
file source reads them."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from kybernetes.v1 import pod_pb2
from services.kubelet.main import parse_args
from services.kubelet.naming import container_hash
from services.kubelet.sources import CONFIG_SOURCE_ANNOTATION, SOURCE_FILE, parse_static_pods
from tools import localcluster, staticpods
from tools.localcluster import Component

REPO = Path(__file__).resolve().parents[2]

STATE = Path("/srv/kyb")
NODE = "node-a"


def components() -> list[Component]:
    return [
        Component("etcd", "etcd", ["--name", "default", "--data-dir", str(STATE / "etcd"), "--log-level", "error"],
                  health="127.0.0.1:2379", grpc_health=False),
        Component("apiserver", "kube-apiserver", ["--listen", "127.0.0.1:6443", "--etcd-servers", "127.0.0.1:2379"],
                  health="127.0.0.1:6443"),
        Component("controller-manager", "kube-controller-manager",
                  ["--server", "127.0.0.1:6443", "--controllers", "scheduler,endpoints"]),
        Component("replicator", "kube-replicator", ["--kubeconfig", str(STATE / "controller-manager.conf")]),
        Component("kubelet-node-1", "kubelet", ["--node-name", NODE], health="127.0.0.1:10250"),
        Component("proxy-node-1", "kube-proxy", ["--node-name", NODE, "--node-ip", "127.0.0.1"]),
        Component("dns", "kube-dns", ["--listen", "10.240.0.1:10053"], health="10.240.0.1:10053", grpc_health=False),
    ]


def as_kubelet_reads(text: str) -> pod_pb2.Pod:
    [pod] = parse_static_pods(text, "manifest.yaml", SOURCE_FILE, NODE)
    return pod


def by_name(name: str) -> Component:
    return next(component for component in components() if component.name == name)


def test_each_component_but_the_kubelet_is_a_valid_static_pod_in_kube_system():
    manifests = staticpods.render_manifests(components(), STATE, "kyb/kybernetes:1", "kyb/etcd:1")
    assert sorted(manifests) == [
        "etcd.yaml", "kube-apiserver.yaml", "kube-controller-manager.yaml", "kube-dns.yaml", "kube-proxy.yaml",
        "kube-replicator.yaml",
    ]
    pods = {name: as_kubelet_reads(text) for name, text in manifests.items()}
    for name, pod in pods.items():
        base = name.removesuffix(".yaml")
        assert pod.metadata.namespace == "kube-system"
        assert pod.metadata.name == f"{base}-{NODE}"
        assert pod.metadata.annotations[CONFIG_SOURCE_ANNOTATION] == SOURCE_FILE
        assert pod.spec.host_network and pod.spec.restart_policy == "Always"
        [container] = pod.spec.containers
        assert container.name == base
    assert pods["etcd.yaml"].spec.containers[0].image == "kyb/etcd:1"
    assert {pod.spec.containers[0].image for name, pod in pods.items() if name != "etcd.yaml"} == {"kyb/kybernetes:1"}
    # Which component each is, for `make status`.
    assert pods["kube-dns.yaml"].metadata.annotations[staticpods.COMPONENT_ANNOTATION] == "dns"


def test_the_program_and_its_flags_are_the_containers_with_its_log_file():
    pod = as_kubelet_reads(staticpods.render_manifest(by_name("apiserver"), STATE, STATE / "logs" / "apiserver.log",
                                                      "img"))
    container = pod.spec.containers[0]
    assert list(container.args) == ["kube-apiserver", "--listen", "127.0.0.1:6443", "--etcd-servers", "127.0.0.1:2379"]
    assert list(container.command) == ["/bin/sh", "-c", f'exec "$0" "$@" >>{STATE}/logs/apiserver.log 2>&1']


def test_every_program_is_a_console_script_of_its_module_in_the_image():
    # A static pod runs its program by name: the component image installs the package, so every
    # program needs its console script, pointing at the module process mode runs.
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for program, module in localcluster.PROGRAMS.items():
        assert scripts.get(program) == f"{module}:main", program
    pod = as_kubelet_reads(staticpods.render_manifest(by_name("controller-manager"), STATE, STATE / "logs" / "c.log",
                                                      "img"))
    assert list(pod.spec.containers[0].args) == [
        "kube-controller-manager", "--server", "127.0.0.1:6443", "--controllers", "scheduler,endpoints",
    ]
    assert pod.metadata.labels["tier"] == "control-plane"


def test_mounts_state_read_only_logs_read_write_and_etcds_data():
    api = as_kubelet_reads(staticpods.render_manifest(by_name("apiserver"), STATE, STATE / "logs" / "a.log", "img"))
    mounts = {m.name: (m.mount_path, m.read_only) for m in api.spec.containers[0].volume_mounts}
    assert mounts == {"state": (str(STATE), True), "logs": (str(STATE / "logs"), False)}
    volumes = {v.name: (v.host_path.path, v.host_path.type) for v in api.spec.volumes}
    assert volumes == {"state": (str(STATE), "Directory"), "logs": (str(STATE / "logs"), "DirectoryOrCreate")}
    etcd = as_kubelet_reads(staticpods.render_manifest(by_name("etcd"), STATE, STATE / "logs" / "etcd.log", "img"))
    mounts = {m.name: (m.mount_path, m.read_only) for m in etcd.spec.containers[0].volume_mounts}
    assert mounts["data"] == (str(STATE / "etcd"), False)
    assert staticpods.etcd_data_dirs(components()) == [str(STATE / "etcd")]


def test_only_the_proxy_gets_capabilities_and_none_is_privileged():
    for component in components():
        if component.program == "kubelet":
            continue
        pod = as_kubelet_reads(staticpods.render_manifest(component, STATE, STATE / "logs" / "x.log", "img"))
        context = pod.spec.containers[0].security_context
        assert not context.privileged
        expected = ["NET_ADMIN", "NET_RAW"] if component.program == "kube-proxy" else []
        assert list(context.capabilities.add) == expected, component.name


def test_a_rebuilt_image_changes_the_containers_spec_so_the_kubelet_replaces_it():
    def spec_hash(image_id: str) -> str:
        text = staticpods.render_manifest(by_name("replicator"), STATE, STATE / "logs" / "r.log", "img:latest",
                                          image_id)
        return container_hash(as_kubelet_reads(text).spec.containers[0])

    assert spec_hash("sha256:aaa") == spec_hash("sha256:aaa")
    assert spec_hash("sha256:aaa") != spec_hash("sha256:bbb")
    pod = as_kubelet_reads(staticpods.render_manifest(by_name("dns"), STATE, STATE / "logs" / "d.log", "i", "sha256:c"))
    assert [(e.name, e.value) for e in pod.spec.containers[0].env] == [(staticpods.IMAGE_ID_ENV, "sha256:c")]


@pytest.mark.parametrize(("name", "program", "expected"), [
    ("etcd", "etcd", "etcd"),
    ("apiserver", "kube-apiserver", "kube-apiserver"),
    ("apiserver-2", "kube-apiserver", "kube-apiserver-2"),
    ("controller-manager", "kube-controller-manager", "kube-controller-manager"),
    ("controller-manager-2", "kube-controller-manager", "kube-controller-manager-2"),
    ("etcd-3", "etcd", "etcd-3"),
    ("proxy-node-1", "kube-proxy", "kube-proxy"),
    ("proxy-e2eab12cd-node-1", "kube-proxy", "kube-proxy"),
    ("dns", "kube-dns", "kube-dns"),
])
def test_pod_names_are_kubeadms(name, program, expected):
    component = Component(name, program, [])
    assert staticpods.pod_base_name(component) == expected
    assert staticpods.static_pod_name(component, NODE) == f"{expected}-{NODE}"
    assert staticpods.manifest_file(component) == f"{expected}.yaml"


def test_two_components_of_one_name_are_refused():
    with pytest.raises(ValueError, match="a second component named 'kube-dns'"):
        staticpods.render_manifests([Component("dns", "kube-dns", []), Component("dns2", "kube-dns", [])],
                                    STATE, "i", "e")


def test_the_kubelets_start_first():
    assert [c.name for c in staticpods.start_order(components())] == [
        "kubelet-node-1", "etcd", "apiserver", "controller-manager", "replicator", "proxy-node-1", "dns",
    ]


def test_the_kubelet_reads_the_manifest_directory_every_second(tmp_path):
    config = parse_args(["--node-name", NODE, "--insecure-dev", *staticpods.kubelet_flags(tmp_path)])
    assert config.manifest_path == str(tmp_path / "manifests")
    assert config.file_check_frequency == 1.0


def test_write_manifests_writes_what_changed_and_removes_the_rest(tmp_path):
    directory = tmp_path / "manifests"
    assert staticpods.write_manifests(directory, {"a.yaml": "A", "b.yaml": "B"}) == ["a.yaml", "b.yaml"]
    # Again: nothing is touched (the kubelet re-reads nothing).
    mtime = (directory / "a.yaml").stat().st_mtime_ns
    assert staticpods.write_manifests(directory, {"a.yaml": "A", "b.yaml": "B"}) == []
    assert (directory / "a.yaml").stat().st_mtime_ns == mtime
    assert staticpods.write_manifests(directory, {"a.yaml": "A2"}) == ["a.yaml", "b.yaml"]
    assert sorted(p.name for p in directory.iterdir()) == ["a.yaml"]
    assert (directory / "a.yaml").read_text() == "A2"


def test_status_rows_from_the_kubelets_pods():
    pod = as_kubelet_reads(staticpods.render_manifest(by_name("apiserver"), STATE, STATE / "logs" / "a.log", "img"))
    pod.status.phase = "Running"
    pod.status.container_statuses.add(name="kube-apiserver", ready=True, restart_count=2)
    not_ours = pod_pb2.Pod()
    not_ours.metadata.name = "web"
    rows = staticpods.pod_rows([pod, not_ours])
    assert rows == [staticpods.PodRow("apiserver", f"kube-system/kube-apiserver-{NODE}", "Running", "1/1", 2)]
    waiting = pod_pb2.Pod()
    waiting.CopyFrom(pod)
    waiting.ClearField("status")
    [row] = staticpods.pod_rows([waiting])
    assert (row.phase, row.ready, row.restarts) == ("Pending", "0/1", 0)


def test_format_table_aligns_columns():
    assert staticpods.format_table([("A", "BB", "C"), ("aaa", "b", "")]) == ["A    BB  C", "aaa  b"]


def test_up_sets_route_localnet_for_a_proxy_on_loopback():
    assert staticpods.needs_route_localnet(components())
    on_lan = Component("proxy-node-1", "kube-proxy", ["--node-ip", "10.240.0.2"])
    assert not staticpods.needs_route_localnet([on_lan, by_name("etcd")])


"""Pod spec -> Docker create arguments."""

from __future__ import annotations

import pytest

from kybernetes.v1 import pod_pb2
from services.kubelet.dockerspec import ContainerConfigError, container_request, infra_request
from services.kubelet.naming import container_hash
from services.kubelet.resolvconf import PodDns


def _pod() -> pod_pb2.Pod:
    pod = pod_pb2.Pod()
    pod.metadata.name = "web"
    web = pod.spec.containers.add(name="web", image="busybox", command=["httpd"], args=["-f", "-p", "80"],
                                  working_dir="/srv")
    web.ports.add(container_port=80, host_port=8080)
    web.ports.add(container_port=53, host_port=5353, protocol="UDP", host_ip="127.0.0.5")
    web.ports.add(container_port=9000)
    web.env.add(name="A", value="1")
    web.resources.limits.update({"cpu": "500m", "memory": "64Mi"})
    web.resources.requests.update({"cpu": "250m"})
    web.volume_mounts.add(name="data", mount_path="/data", read_only=True)
    web.volume_mounts.add(name="data", mount_path="/logs", sub_path="logs")
    pod.spec.containers.add(name="side", image="busybox")
    return pod


def test_infra_publishes_every_host_port_on_the_node_ip() -> None:
    request = infra_request(_pod(), name="infra", labels={"l": "v"}, pause_image="pause", node_ip="127.0.0.2")
    assert request.image == "pause"
    assert request.container_kwargs["hostname"] == "web"
    assert set(request.container_kwargs["ports"]) == {(80, "tcp"), (53, "udp"), (9000, "tcp")}
    assert request.host_config_kwargs["port_bindings"] == {
        "80/tcp": [("127.0.0.2", 8080)],
        "53/udp": [("127.0.0.5", 5353)],
    }
    assert request.host_config_kwargs["ipc_mode"] == "shareable"


def test_app_container_joins_the_infra_and_maps_its_spec() -> None:
    pod = _pod()
    request = container_request(pod, pod.spec.containers[0], name="c", labels={}, infra_id="abc",
                                volume_paths={"data": "/var/lib/x/data"})
    kwargs, host = request.container_kwargs, request.host_config_kwargs
    assert kwargs["entrypoint"] == ["httpd"] and kwargs["command"] == ["-f", "-p", "80"]
    assert kwargs["environment"] == ["A=1"] and kwargs["working_dir"] == "/srv"
    assert host["network_mode"] == "container:abc" and host["ipc_mode"] == "container:abc"
    assert host["nano_cpus"] == 500_000_000 and host["mem_limit"] == 64 * 2**20
    assert host["cpu_shares"] == 256
    mounts = [(m["Source"], m["Target"], m["ReadOnly"]) for m in host["mounts"]]
    assert mounts == [("/var/lib/x/data", "/data", True), ("/var/lib/x/data/logs", "/logs", False)]
    assert request.sandbox_id == "abc"


def test_seccomp_is_unconfined_unless_the_runtime_default_is_asked_for() -> None:
    pod = _pod()
    infra = infra_request(pod, name="infra", labels={}, pause_image="pause", node_ip="127.0.0.1")
    app = container_request(pod, pod.spec.containers[1], name="c", labels={}, infra_id="abc", volume_paths={})
    assert infra.host_config_kwargs["security_opt"] == ["seccomp=unconfined"]
    assert app.host_config_kwargs["security_opt"] == ["seccomp=unconfined"]
    infra = infra_request(pod, name="infra", labels={}, pause_image="pause", node_ip="127.0.0.1",
                          runtime_default_seccomp=True)
    app = container_request(pod, pod.spec.containers[1], name="c", labels={}, infra_id="abc", volume_paths={},
                            runtime_default_seccomp=True)
    assert infra.host_config_kwargs["security_opt"] is None
    assert app.host_config_kwargs["security_opt"] is None


def test_no_command_keeps_the_image_defaults() -> None:
    pod = _pod()
    request = container_request(pod, pod.spec.containers[1], name="c", labels={}, infra_id="abc", volume_paths={})
    assert "entrypoint" not in request.container_kwargs and "command" not in request.container_kwargs
    assert request.host_config_kwargs["mounts"] is None


def test_bad_specs_are_clear_errors() -> None:
    pod = _pod()
    with pytest.raises(ContainerConfigError, match="volume 'data' is not defined"):
        container_request(pod, pod.spec.containers[0], name="c", labels={}, infra_id="i", volume_paths={})
    pod.spec.containers[0].volume_mounts[1].sub_path = "../escape"
    with pytest.raises(ContainerConfigError, match="subPath"):
        container_request(pod, pod.spec.containers[0], name="c", labels={}, infra_id="i", volume_paths={"data": "/d"})
    pod = _pod()
    pod.spec.containers[0].resources.limits["memory"] = "lots"
    with pytest.raises(ContainerConfigError, match="resources"):
        container_request(pod, pod.spec.containers[0], name="c", labels={}, infra_id="i", volume_paths={"data": "/d"})


def test_service_variables_and_env_reach_the_container_expanded() -> None:
    pod = _pod()
    web = pod.spec.containers[0]
    web.env.add(name="URL", value="http://$(DB_SERVICE_HOST):$(DB_SERVICE_PORT)")
    web.env.add(name="DB_SERVICE_PORT", value="6543")  # declared later: overrides, unseen by URL
    del web.args[:]
    web.args.extend(["-p", "$(DB_SERVICE_PORT)", "$$(A)", "$(A)"])
    service_env = {"DB_SERVICE_HOST": "10.0.0.5", "DB_SERVICE_PORT": "5432", "A": "from-service"}
    request = container_request(pod, web, name="c", labels={}, infra_id="abc",
                                volume_paths={"data": "/d"}, service_env=service_env)
    assert request.container_kwargs["environment"] == [
        "A=1", "URL=http://10.0.0.5:5432", "DB_SERVICE_PORT=6543", "DB_SERVICE_HOST=10.0.0.5",
    ]
    assert request.container_kwargs["entrypoint"] == ["httpd"]
    assert request.container_kwargs["command"] == ["-p", "6543", "$(A)", "1"]


def test_service_variables_do_not_change_the_container_hash_or_labels() -> None:
    pod = _pod()
    web = pod.spec.containers[0]
    before = container_hash(web)
    labels = {"io.kybernetes.container.hash": before}
    without = container_request(pod, web, name="c", labels=dict(labels), infra_id="abc", volume_paths={"data": "/d"})
    with_services = container_request(pod, web, name="c", labels=dict(labels), infra_id="abc",
                                      volume_paths={"data": "/d"}, service_env={"NEW_SERVICE_HOST": "10.0.0.9"})
    assert container_hash(web) == before
    assert without.labels == with_services.labels == labels
    assert "NEW_SERVICE_HOST=10.0.0.9" in with_services.container_kwargs["environment"]
    assert without.container_kwargs["environment"] == ["A=1"]


def test_dns_goes_to_a_sandbox_on_dockers_bridge_only() -> None:
    dns = PodDns(("10.96.0.10",), ("ns.svc.cluster.local", "svc.cluster.local", "cluster.local"), ("ndots:5",))
    bridge = infra_request(_pod(), name="infra", labels={}, pause_image="pause", node_ip="127.0.0.1", dns=dns)
    assert bridge.host_config_kwargs["dns"] == ["10.96.0.10"]
    assert bridge.host_config_kwargs["dns_search"] == ["ns.svc.cluster.local", "svc.cluster.local", "cluster.local"]
    assert bridge.host_config_kwargs["dns_opt"] == ["ndots:5"]
    wired = infra_request(_pod(), name="infra", labels={}, pause_image="pause", node_ip="127.0.0.1", dns=dns,
                          network_disabled=True)
    assert "dns" not in wired.host_config_kwargs
    plain = infra_request(_pod(), name="infra", labels={}, pause_image="pause", node_ip="127.0.0.1")
    assert "dns" not in plain.host_config_kwargs

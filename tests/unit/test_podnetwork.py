"""The pod network's pure parts: the host-local address pool and the files a pod gets."""

from __future__ import annotations

import ipaddress
import os
import time

import pytest

from kybernetes.v1 import pod_pb2
from services.kubelet.dockerspec import container_request, infra_request
from services.kubelet.podnetwork import AddressPool, PodNetwork, PodNetworkError, hosts_file, resolv_conf, veth_name


def pool(tmp_path, node: str = "node-a", cidr: str = "10.88.0.0/29") -> AddressPool:
    return AddressPool(tmp_path / "kyb0", ipaddress.IPv4Network(cidr), node)


def test_addresses_skip_network_gateway_and_broadcast_and_stay_with_their_pod(tmp_path):
    addresses = pool(tmp_path)
    first = addresses.allocate("pod-1")
    assert first == "10.88.0.2"  # .0 is the network, .1 the bridge
    assert addresses.allocate("pod-1") == first
    handed_out = {first} | {addresses.allocate(f"pod-{i}") for i in range(2, 6)}
    assert handed_out == {"10.88.0.2", "10.88.0.3", "10.88.0.4", "10.88.0.5", "10.88.0.6"}
    with pytest.raises(PodNetworkError, match="no free address"):
        addresses.allocate("pod-6")  # .7 is the broadcast address


def test_two_kubelets_on_one_host_never_share_an_address(tmp_path):
    a, b = pool(tmp_path, "node-a"), pool(tmp_path, "node-b")
    taken = [a.allocate("a-1"), b.allocate("b-1"), a.allocate("a-2"), b.allocate("b-2")]
    assert len(set(taken)) == 4


def test_a_restarted_kubelet_finds_its_pods_addresses(tmp_path):
    address = pool(tmp_path).allocate("pod-1")
    assert pool(tmp_path).find("pod-1") == address
    assert pool(tmp_path, "node-b").find("pod-1") is None  # another node's pod


def test_a_released_address_is_not_handed_out_again_at_once(tmp_path):
    addresses = pool(tmp_path)
    first = addresses.allocate("pod-1")
    addresses.release("pod-1")
    assert addresses.find("pod-1") is None
    assert addresses.allocate("pod-2") != first


def test_garbage_collection_frees_only_old_allocations_of_pods_gone(tmp_path):
    addresses = pool(tmp_path)
    gone, live, fresh = addresses.allocate("gone"), addresses.allocate("live"), addresses.allocate("fresh")
    old = time.time() - 3600
    for address in (gone, live):
        os.utime(tmp_path / "kyb0" / address, (old, old))
    freed = addresses.release_unowned({"live"}, min_age=60)
    assert [a.address for a in freed] == [gone]
    assert addresses.find("gone") is None
    assert addresses.find("live") == live and addresses.find("fresh") == fresh


@pytest.mark.parametrize(
    "cidr, bridge, problem",
    [("10.88.0.0/31", "kyb0", "too small"), ("10.88.0.1/16", "kyb0", "host bits"),
     ("not-a-cidr", "kyb0", "--pod-cidr"), ("10.88.0.0/16", "a-bridge-name-too-long", "1 to 15")],
)
def test_bad_settings_are_refused_naming_the_flag(tmp_path, cidr, bridge, problem):
    with pytest.raises(PodNetworkError, match=problem):
        PodNetwork("node", cidr, bridge, str(tmp_path))


def test_veth_names_fit_linux_limit():
    assert len(veth_name("0123456789abcdef" * 4)) <= 15


def test_hosts_file_names_the_pod():
    text = hosts_file("10.88.0.7", "web-1")
    assert "127.0.0.1\tlocalhost\n" in text
    assert text.endswith("10.88.0.7\tweb-1\n")


def test_resolv_conf_drops_loopback_name_servers():
    node = "search example.org\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 10.0.0.2\noptions edns0\n"
    assert resolv_conf(node) == "search example.org\nnameserver 10.0.0.2\noptions edns0\n"


def test_managed_files_are_mounted_unless_the_container_mounts_there_itself():
    pod = pod_pb2.Pod()
    pod.metadata.name, pod.metadata.uid = "web", "uid-1"
    pod.spec.volumes.add(name="hosts")
    container = pod.spec.containers.add(name="main", image="busybox")
    managed = {"/etc/hosts": "/pods/uid-1/etc-hosts", "/etc/resolv.conf": "/pods/uid-1/resolv.conf"}

    def targets() -> dict[str, str]:
        request = container_request(
            pod, container, name="c", labels={}, infra_id="infra", volume_paths={"hosts": "/vol/hosts"},
            managed_files=managed,
        )
        return {m["Target"]: m["Source"] for m in request.host_config_kwargs["mounts"]}

    assert targets() == managed
    container.volume_mounts.add(name="hosts", mount_path="/etc/hosts")
    assert targets() == {"/etc/hosts": "/vol/hosts", "/etc/resolv.conf": "/pods/uid-1/resolv.conf"}


def test_a_sandbox_on_the_pod_network_has_dockers_networking_off_and_docker_publishes_nothing():
    pod = pod_pb2.Pod()
    pod.metadata.name = "web"
    container = pod.spec.containers.add(name="main", image="busybox")
    container.ports.add(container_port=80, host_port=8080)
    request = infra_request(
        pod, name="infra", labels={}, pause_image="pause", node_ip="127.0.0.1", network_disabled=True
    )
    assert request.container_kwargs["network_disabled"] is True
    # Its host ports are the kubelet's to publish (hostports.py), not Docker's.
    assert request.host_config_kwargs["port_bindings"] is None
    bridged = infra_request(pod, name="infra", labels={}, pause_image="pause", node_ip="127.0.0.1")
    assert bridged.host_config_kwargs["port_bindings"] == {"80/tcp": [("127.0.0.1", 8080)]}

"""Cluster IPs and node ports, allocated by a real API server over real etcd.

Checked against etcd itself: every service's cluster IP and node ports have an
allocation key naming it (`/registry/ipaddresses/<ip>`, `/registry/servicenodeports/<port>`),
and every allocation key names a service that exists and has that value, also
after concurrent creates on one or two API servers and after an API server is
killed in the middle of them. Refused requests store nothing: neither the
service nor any key.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import subprocess
import uuid
from typing import Any

import grpc
import pytest

from kybernetes.v1 import meta_pb2, service_pb2
from services.apiserver.storage import Storage, prefix_range_end
from services.common.client import ApiClient
from services.common.resources import SERVICES
from tools.processes import ApiServerProcess, dev_pki, python_module_argv

from .apihelpers import expect_error
from .control_helpers import ControlPlane, kubecfg

DEFAULT_RANGE = ipaddress.ip_network("10.96.0.0/12")
PREFIXES = ("/registry/ipaddresses/", "/registry/servicenodeports/")


@pytest.fixture(scope="module")
def plane():
    control = ControlPlane("")
    yield control
    control.stop()


@pytest.fixture
def api_address(plane: ControlPlane) -> str:
    return plane.address


def service(
    name: str, namespace: str, cluster_ip: str = "", type_: str = "", *node_ports: int, port: int = 80
) -> service_pb2.Service:
    ports = [
        service_pb2.ServicePort(name=f"p{i}", port=port + i, node_port=node_port)
        for i, node_port in enumerate(node_ports or (0,))
    ]
    return service_pb2.Service(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace),
        spec=service_pb2.ServiceSpec(selector={"app": name}, ports=ports, cluster_ip=cluster_ip, type=type_),
    )


async def allocations(etcd_endpoint: str) -> dict[str, dict[str, Any]]:
    """Every allocation key in etcd, with the owner it names."""
    storage = Storage([etcd_endpoint], credentials=dev_pki().etcd_client_credentials())
    await storage.connect()
    try:
        found: dict[str, dict[str, Any]] = {}
        for prefix in PREFIXES:
            start = prefix.encode()
            result = await storage.range(start, prefix_range_end(start))
            found.update({kv.key.decode(): json.loads(kv.value) for kv in result.kvs})
        return found
    finally:
        await storage.close()


def keys_of(svc: service_pb2.Service) -> set[str]:
    keys = set()
    if svc.spec.cluster_ip and svc.spec.cluster_ip != "None":
        keys.add(f"{PREFIXES[0]}{svc.spec.cluster_ip}")
    keys.update(f"{PREFIXES[1]}{p.node_port}" for p in svc.spec.ports if p.node_port)
    return keys


async def assert_consistent(api: ApiClient, etcd_endpoint: str) -> list[service_pb2.Service]:
    """No value shared, every service's values held by keys naming it, no key without its service."""
    services = list((await api.list(SERVICES)).items)
    keys = await allocations(etcd_endpoint)
    ips = [s.spec.cluster_ip for s in services if s.spec.cluster_ip not in ("", "None")]
    assert len(ips) == len(set(ips)), "a cluster IP was given to two services"
    node_ports = [p.node_port for s in services for p in s.spec.ports if p.node_port]
    assert len(node_ports) == len(set(node_ports)), "a node port was given to two services"
    wanted: dict[str, service_pb2.Service] = {}
    for svc in services:
        for key in keys_of(svc):
            wanted[key] = svc
            owner = keys.get(key)
            assert owner is not None, f"{svc.metadata.namespace}/{svc.metadata.name}: {key} has no key"
            assert (owner["namespace"], owner["name"], owner["uid"]) == (
                svc.metadata.namespace, svc.metadata.name, svc.metadata.uid,
            ), f"{key} names {owner}"
    leaked = sorted(set(keys) - set(wanted))
    assert not leaked, f"allocation keys without their service: {leaked}"
    return services


async def snapshot(api: ApiClient, etcd_endpoint: str, namespace: str) -> tuple[list[Any], dict[str, Any]]:
    return list((await api.list(SERVICES, namespace)).items), await allocations(etcd_endpoint)


async def refused(
    api: ApiClient, plane: ControlPlane, namespace: str, call: Any, code: grpc.StatusCode, *expected: str
) -> str:
    """The call fails with code and a message saying each of expected; nothing is stored."""
    before = await snapshot(api, plane.etcd.endpoint, namespace)
    message = await expect_error(code, call)
    for text in expected:
        assert text in message, message
    assert await snapshot(api, plane.etcd.endpoint, namespace) == before
    return message


def in_range(ip: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network = DEFAULT_RANGE) -> bool:
    address = ipaddress.ip_address(ip)
    return address in network and address not in (network.network_address, network.broadcast_address)


# -- allocation -------------------------------------------------------------------------


async def test_every_service_gets_its_own_ip_in_range(api, plane, namespace):
    created = [await api.create(service(f"s{i}", namespace)) for i in range(10)]
    ips = [s.spec.cluster_ip for s in created]
    assert len(set(ips)) == 10 and all(in_range(ip) for ip in ips), ips
    assert "10.96.0.1" not in ips  # kept for the `kubernetes` service
    listed = {s.metadata.name: s.spec.cluster_ip for s in (await api.list(SERVICES, namespace)).items}
    assert listed == {s.metadata.name: s.spec.cluster_ip for s in created}
    assert (await api.get(SERVICES, "s3", namespace)).spec.cluster_ip == ips[3]
    await assert_consistent(api, plane.etcd.endpoint)


async def test_generated_names_get_ips_too(api, plane, namespace):
    request = service("", namespace)
    request.metadata.generate_name = "gen-"
    created = await asyncio.gather(*(api.create(request) for _ in range(5)))
    assert len({s.metadata.name for s in created}) == 5 and all(s.metadata.name.startswith("gen-") for s in created)
    assert len({s.spec.cluster_ip for s in created}) == 5
    await assert_consistent(api, plane.etcd.endpoint)


async def test_concurrent_creates_never_share_an_ip(plane, namespace):
    clients = [ApiClient(plane.address) for _ in range(4)]
    try:
        created = await asyncio.gather(
            *(clients[i % 4].create(service(f"c{i}", namespace)) for i in range(200))
        )
        ips = {s.spec.cluster_ip for s in created}
        assert len(ips) == 200 and all(in_range(ip) for ip in ips)
        await assert_consistent(clients[0], plane.etcd.endpoint)
    finally:
        await asyncio.gather(*(client.close() for client in clients))


async def test_two_api_servers_on_one_etcd_never_share_a_value(namespace):
    """Two servers whose views are stale about each other's picks, in a range that
    200 services mostly fill: only etcd's guard keeps the values apart."""
    small = ("--service-cluster-ip-range=10.1.0.0/24", "--service-node-port-range=30000-30299")
    control = ControlPlane("", *small)
    other = ApiServerProcess(control.etcd.endpoint, "--controllers=", *small)
    clients = [ApiClient(address) for address in (control.address, other.address) for _ in range(2)]
    try:
        created = await asyncio.gather(
            *(clients[i % 4].create(service(f"t{i}", namespace, "", "NodePort")) for i in range(200))
        )
        network = ipaddress.ip_network("10.1.0.0/24")
        assert len({s.spec.cluster_ip for s in created}) == 200
        assert all(in_range(s.spec.cluster_ip, network) for s in created)
        assert all(30000 <= s.spec.ports[0].node_port <= 30299 for s in created)
        await assert_consistent(clients[0], control.etcd.endpoint)
    finally:
        await asyncio.gather(*(client.close() for client in clients))
        other.stop()
        control.stop()


async def test_api_server_killed_mid_creates_leaves_no_duplicate_and_no_leak(namespace):
    control = ControlPlane("")
    clients = [ApiClient(control.address) for _ in range(4)]
    try:
        done = 0
        enough = asyncio.Event()

        async def create(i: int) -> None:
            nonlocal done
            kind = "NodePort" if i % 2 else ""
            await clients[i % 4].create(service(f"k{i}", namespace, "", kind))
            done += 1
            if done >= 60:
                enough.set()

        creates = asyncio.gather(*(create(i) for i in range(200)), return_exceptions=True)
        await asyncio.wait_for(enough.wait(), 60)
        assert control.apiserver is not None
        control.apiserver.kill()  # SIGKILL, with creates in flight
        results = await creates
        failed = [r for r in results if isinstance(r, BaseException)]
        assert 60 <= done < 200 and failed, (done, len(failed))

        control.apiserver = None
        control.start_apiserver()  # a new server, on the same etcd
        async with ApiClient(control.address) as api:
            survivors = await assert_consistent(api, control.etcd.endpoint)
            assert done <= len(survivors) < 200
            # The new server knows what is taken: more creates still get values of their own.
            await asyncio.gather(*(api.create(service(f"n{i}", namespace, "", "NodePort")) for i in range(30)))
            await assert_consistent(api, control.etcd.endpoint)
        restarted = control.apiserver
        assert restarted is not None
        log = restarted.log_text()
        assert "service_allocation_repaired" not in log and "service_allocation_released" not in log, (
            "atomic writes should leave nothing to repair"
        )
    finally:
        await asyncio.gather(*(client.close() for client in clients))
        control.stop()


# -- asking for values ------------------------------------------------------------------------


async def test_a_requested_free_ip_is_honoured_and_freed_by_delete(api, plane, namespace):
    created = await api.create(service("asked", namespace, "10.96.0.5"))
    assert created.spec.cluster_ip == "10.96.0.5"
    assert (await allocations(plane.etcd.endpoint))["/registry/ipaddresses/10.96.0.5"]["uid"] == created.metadata.uid
    await api.delete(SERVICES, "asked", namespace)
    assert "/registry/ipaddresses/10.96.0.5" not in await allocations(plane.etcd.endpoint)
    again = await api.create(service("asked-again", namespace, "10.96.0.5"))
    assert again.spec.cluster_ip == "10.96.0.5"
    # The first address is never picked, but may be asked for (it is the `kubernetes` service's).
    first = await api.create(service("kubernetes", namespace, "10.96.0.1"))
    assert first.spec.cluster_ip == "10.96.0.1"
    await api.delete(SERVICES, "kubernetes", namespace)
    await assert_consistent(api, plane.etcd.endpoint)


async def test_headless_service_has_no_ip(api, plane, namespace):
    created = await api.create(service("headless", namespace, "None"))
    assert created.spec.cluster_ip == "None"
    assert not any(owner["uid"] == created.metadata.uid for owner in (await allocations(plane.etcd.endpoint)).values())
    fetched = await api.get(SERVICES, "headless", namespace)
    fetched.spec.cluster_ip = ""  # an update that leaves it out keeps it
    assert (await api.update(fetched)).spec.cluster_ip == "None"


async def test_node_port_services_get_ports_in_range_and_give_them_back(api, plane, namespace):
    created = await api.create(service("np", namespace, "", "NodePort", 0, 0))
    ports = [p.node_port for p in created.spec.ports]
    assert len(set(ports)) == 2 and all(30000 <= p <= 32767 for p in ports), ports
    await assert_consistent(api, plane.etcd.endpoint)

    # An update that leaves out what the server allocated (as `apply` of the manifest) keeps it, changing nothing.
    manifest = service("np", namespace, "", "NodePort", 0, 0)
    manifest.metadata.resource_version = created.metadata.resource_version
    kept = await api.update(manifest)
    assert kept.spec == created.spec and kept.metadata.resource_version == created.metadata.resource_version

    # Back to ClusterIP: the ports go with the type, and are free again.
    as_cluster_ip = service("np", namespace, created.spec.cluster_ip, "ClusterIP", 0, 0)
    updated = await api.update(as_cluster_ip)
    assert [p.node_port for p in updated.spec.ports] == [0, 0] and updated.spec.cluster_ip == created.spec.cluster_ip
    keys = await allocations(plane.etcd.endpoint)
    assert not any(f"/registry/servicenodeports/{p}" in keys for p in ports)

    # And NodePort again, asking for one of the old ports by number.
    again = await api.update(service("np", namespace, "", "NodePort", ports[1], 0))
    assert again.spec.ports[0].node_port == ports[1] and 30000 <= again.spec.ports[1].node_port <= 32767
    await assert_consistent(api, plane.etcd.endpoint)

    await api.delete(SERVICES, "np", namespace)
    keys = await allocations(plane.etcd.endpoint)
    assert not any(owner["uid"] == created.metadata.uid for owner in keys.values())


async def test_kubecfg_get_svc_shows_the_cluster_ip_and_node_port(api, plane, namespace):
    created = await api.create(service("shown", namespace, "", "NodePort"))
    out = await kubecfg(plane.address, namespace, "get", "svc")
    rows = [line.split() for line in out.splitlines()]
    assert rows[0][:5] == ["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "SELECTOR"]
    assert rows[1][:4] == ["shown", "NodePort", created.spec.cluster_ip, f"80:{created.spec.ports[0].node_port}/TCP"]


# -- refused: the right code, the field named, nothing stored ---------------------------------------


@pytest.mark.parametrize(
    ("spec", "code", "expected"),
    [
        pytest.param(
            ("1.2.3.4", ""), grpc.StatusCode.INVALID_ARGUMENT,
            ['spec.clusterIP: Invalid value: "1.2.3.4": provided IP is not in the valid range. '
             "The range of valid IPs is 10.96.0.0/12"],
            id="ip-out-of-range",
        ),
        pytest.param(
            ("10.96.0.0", ""), grpc.StatusCode.INVALID_ARGUMENT, ['spec.clusterIP: Invalid value: "10.96.0.0"'],
            id="network-address",
        ),
        pytest.param(
            ("10.111.255.255", ""), grpc.StatusCode.INVALID_ARGUMENT, ["spec.clusterIP", "not in the valid range"],
            id="broadcast-address",
        ),
        pytest.param(("10.96.0", ""), grpc.StatusCode.INVALID_ARGUMENT, ["spec.clusterIP", "valid IP"], id="not-an-ip"),
        pytest.param(
            ("None", "NodePort"), grpc.StatusCode.INVALID_ARGUMENT,
            ["""spec.clusterIP: Invalid value: "None": may not be set to 'None' for NodePort services"""],
            id="headless-node-port-type",
        ),
        pytest.param(
            ("None", "", 30100), grpc.StatusCode.INVALID_ARGUMENT,
            ["spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"],
            id="headless-with-node-port",
        ),
        pytest.param(
            ("", "NodePort", 8080), grpc.StatusCode.INVALID_ARGUMENT,
            ["spec.ports[0].nodePort: Invalid value: 8080: provided port is not in the valid range. "
             "The range of valid ports is 30000-32767"],
            id="node-port-out-of-range",
        ),
        pytest.param(
            ("1.2.3.4", "NodePort", 80), grpc.StatusCode.INVALID_ARGUMENT,
            ["spec.clusterIP: Invalid value", "spec.ports[0].nodePort: Invalid value: 80"],
            id="both-out-of-range-both-said",
        ),
    ],
)
async def test_bad_values_are_refused_on_create(api, plane, namespace, spec, code, expected):
    cluster_ip, type_, *node_ports = spec
    await refused(api, plane, namespace, api.create(service("bad", namespace, cluster_ip, type_, *node_ports)), code,
                  'Service "bad" is invalid', *expected)


async def test_taken_values_are_already_exists_and_store_nothing(api, plane, namespace):
    holder = await api.create(service("holder", namespace, "10.96.0.7", "NodePort", 30107))
    assert (holder.spec.cluster_ip, holder.spec.ports[0].node_port) == ("10.96.0.7", 30107)
    await refused(
        api, plane, namespace, api.create(service("ip-taken", namespace, "10.96.0.7")),
        grpc.StatusCode.ALREADY_EXISTS, 'spec.clusterIP: Invalid value: "10.96.0.7": provided IP is already allocated',
    )
    # The IP asked for is free, the port is not: neither is stored (one transaction).
    await refused(
        api, plane, namespace, api.create(service("port-taken", namespace, "10.96.0.8", "NodePort", 30107)),
        grpc.StatusCode.ALREADY_EXISTS,
        "spec.ports[0].nodePort: Invalid value: 30107: provided port is already allocated",
    )
    # The same on update: a ClusterIP service turned NodePort on a taken port.
    plain = await api.create(service("plain", namespace))
    taken_port = service("plain", namespace, "", "NodePort", 30107)
    await refused(
        api, plane, namespace, api.update(taken_port), grpc.StatusCode.ALREADY_EXISTS, "spec.ports[0].nodePort"
    )
    assert await api.get(SERVICES, "plain", namespace) == plain


async def test_cluster_ip_is_immutable(api, plane, namespace):
    created = await api.create(service("fixed", namespace))
    for changed in ("10.96.0.9", "None"):
        update = service("fixed", namespace, changed)
        await refused(
            api, plane, namespace, api.update(update), grpc.StatusCode.INVALID_ARGUMENT,
            f'spec.clusterIP: Invalid value: "{changed}": field is immutable',
        )
    out_of_range = service("fixed", namespace, "", "NodePort", 99)
    await refused(api, plane, namespace, api.update(out_of_range), grpc.StatusCode.INVALID_ARGUMENT,
                  "spec.ports[0].nodePort: Invalid value: 99: provided port is not in the valid range")
    assert await api.get(SERVICES, "fixed", namespace) == created


# -- small ranges ---------------------------------------------------------------------------------


async def test_a_full_range_is_resource_exhausted_until_a_value_is_freed():
    control = ControlPlane("", "--service-cluster-ip-range=10.2.0.0/29", "--service-node-port-range=30000-30001")
    namespace = f"t-{uuid.uuid4().hex[:10]}"
    try:
        async with ApiClient(control.address) as api:
            for name in ("np1", "np2"):
                await api.create(service(name, namespace, "", "NodePort"))
            await refused(
                api, control, namespace, api.create(service("np3", namespace, "", "NodePort")),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "spec.ports[0].nodePort: failed to allocate a node port from 30000-30001: the range is full",
            )
            # Five addresses to pick in a /29: .2 to .6 (.0 and .7 are not addresses, .1 is kept).
            for name in ("a", "b", "c"):
                await api.create(service(name, namespace))
            services = await assert_consistent(api, control.etcd.endpoint)
            assert sorted(s.spec.cluster_ip for s in services) == [f"10.2.0.{i}" for i in range(2, 7)]
            await refused(
                api, control, namespace, api.create(service("d", namespace)), grpc.StatusCode.RESOURCE_EXHAUSTED,
                "spec.clusterIP: failed to allocate a cluster IP from 10.2.0.0/29: the range is full",
            )
            assert (await api.create(service("kubernetes", namespace, "10.2.0.1"))).spec.cluster_ip == "10.2.0.1"
            freed = (await api.delete(SERVICES, "b", namespace)).spec.cluster_ip
            assert (await api.create(service("d", namespace))).spec.cluster_ip == freed
            await assert_consistent(api, control.etcd.endpoint)
    finally:
        control.stop()


# -- start-up -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        pytest.param("--service-cluster-ip-range=10.0.0.0/8", "10.0.0.0/8 is too large", id="ip-range-too-large"),
        pytest.param("--service-cluster-ip-range=banana", '"banana" is not a CIDR', id="ip-range-not-a-cidr"),
        pytest.param("--service-node-port-range=32767-30000", "must be FIRST-LAST", id="port-range-reversed"),
        pytest.param(
            "--service-node-port-range=10000-11000", "10250 (the kubelet's API)", id="port-range-takes-components"
        ),
    ],
)
def test_a_bad_range_flag_stops_the_server_at_once(flag, message):
    result = subprocess.run(
        python_module_argv("services.apiserver.main", "--etcd-servers=127.0.0.1:1", flag),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result
    assert message in result.stderr and flag.split("=")[0] in result.stderr, result.stderr


async def test_start_up_repairs_keys_that_do_not_match_the_services(namespace):
    """Services stored before allocation keys existed get theirs; keys of no service are freed."""
    control = ControlPlane("")
    try:
        legacy = service("legacy", namespace, "10.96.0.20", "NodePort", 30120)
        legacy.metadata.uid = "legacy-uid"
        legacy.api_version, legacy.kind = "v1", "Service"
        storage = Storage([control.etcd.endpoint], credentials=dev_pki().etcd_client_credentials())
        await storage.connect()
        try:
            await storage.create(f"/registry/services/{namespace}/legacy".encode(), legacy.SerializeToString())
            ghost = json.dumps({"namespace": namespace, "name": "ghost", "uid": "x", "resource": "services"}).encode()
            await storage.create(b"/registry/ipaddresses/10.96.0.21", ghost)
            await storage.create(b"/registry/servicenodeports/30121", ghost)
        finally:
            await storage.close()
        control.stop_apiserver()
        control.start_apiserver()
        async with ApiClient(control.address) as api:
            await assert_consistent(api, control.etcd.endpoint)
            await expect_error(grpc.StatusCode.ALREADY_EXISTS, api.create(service("copy", namespace, "10.96.0.20")))
            assert (await api.create(service("reuse", namespace, "10.96.0.21"))).spec.cluster_ip == "10.96.0.21"
        assert control.apiserver is not None
        log = control.apiserver.log_text()
        assert log.count("service_allocation_repaired") == 2 and log.count("service_allocation_released") == 2, log
    finally:
        control.stop()

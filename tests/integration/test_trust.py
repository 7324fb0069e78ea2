"""Trust, end to end against a real API server and etcd over real TLS: who may call,
what an identity may do, and how a node joins with a token. Each refusal is checked for
its status and for leaving stored state as it was."""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from kybernetes.v1 import certificates_pb2, certificates_pb2_grpc, kubelet_pb2, kubelet_pb2_grpc, meta_pb2, node_pb2
from services.apiserver.storage import Storage
from services.common import kubeconfig
from services.common.client import ApiClient
from services.common.pki import CertificateAuthority, certificate_request
from services.common.resources import NODES, PODS
from services.common.transport import ClientCredentials, aio_channel
from tests.polling import eventually
from tools.clusterpki import ClusterPKI
from tools.processes import ManagedProcess, python_module_argv

from .apihelpers import expect_error, make_node, make_pod
from .kubelet_helpers import SHARED_POD_CIDR, KubeletProcess


def client_as(address: str, credentials: ClientCredentials) -> ApiClient:
    return ApiClient(address, credentials=credentials, timeout=10)


async def call_fails(client: ApiClient, awaitable_factory) -> grpc.aio.AioRpcError:
    try:
        await awaitable_factory(client)
    except grpc.aio.AioRpcError as error:
        return error
    finally:
        await client.close()
    raise AssertionError("the call was accepted")


# -- authentication ------------------------------------------------------------------------


async def test_no_credentials_on_the_token_port_are_unauthenticated(apiserver, cluster_pki, api, unique_name):
    nobody = ClientCredentials(cluster_pki.ca.certificate_pem)
    error = await call_fails(client_as(apiserver.token_address, nobody), lambda c: c.create(make_node(unique_name)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no credentials" in error.details()
    await expect_error(grpc.StatusCode.NOT_FOUND, api.get(NODES, unique_name, ""))


async def test_a_wrong_token_is_unauthenticated(apiserver, cluster_pki, api, unique_name):
    wrong = ClientCredentials(cluster_pki.ca.certificate_pem, token="x" * 48)
    error = await call_fails(client_as(apiserver.token_address, wrong), lambda c: c.create(make_node(unique_name)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and error.details() == "invalid bearer token"
    await expect_error(grpc.StatusCode.NOT_FOUND, api.get(NODES, unique_name, ""))


async def test_the_static_token_authenticates(apiserver, cluster_pki):
    _, token = cluster_pki.ensure_token_file()
    client = client_as(apiserver.token_address, ClientCredentials(cluster_pki.ca.certificate_pem, token=token))
    try:
        # The token's user is no admin: authenticated, then refused by authorization.
        error = await expect_error(grpc.StatusCode.PERMISSION_DENIED, client.list(NODES))
        assert 'user "kybernetes-user" cannot list resource "nodes"' in error
    finally:
        await client.close()


@pytest.mark.parametrize("which", ["another CA", "expired", "no certificate"])
async def test_the_certificate_port_refuses_bad_certificates(apiserver, cluster_pki, api, unique_name, which):
    if which == "another CA":
        stranger = CertificateAuthority.create("not-the-cluster-ca")
        pair = stranger.issue("kubernetes-admin", organizations=["system:masters"])
        credentials = ClientCredentials(cluster_pki.ca.certificate_pem, pair.certificate, pair.key)
    elif which == "expired":
        long_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
        pair = cluster_pki.ca.issue(
            "kubernetes-admin", organizations=["system:masters"], not_before=long_ago,
            valid_for=datetime.timedelta(days=1),
        )
        credentials = ClientCredentials(cluster_pki.ca.certificate_pem, pair.certificate, pair.key)
    else:
        credentials = ClientCredentials(cluster_pki.ca.certificate_pem)
    error = await call_fails(client_as(apiserver.address, credentials), lambda c: c.create(make_node(unique_name)))
    # The TLS handshake refuses it (grpcio can only require a certificate, and checks it
    # there): the call never reaches the server.
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    await expect_error(grpc.StatusCode.NOT_FOUND, api.get(NODES, unique_name, ""))


async def test_a_client_does_not_talk_to_a_server_it_cannot_verify(apiserver, cluster_pki):
    other = CertificateAuthority.create("someone-else")
    admin = cluster_pki.credentials("admin")
    trusting_another_ca = ClientCredentials(other.certificate_pem, admin.certificate, admin.key)
    error = await call_fails(client_as(apiserver.address, trusting_another_ca), lambda c: c.list(NODES))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_etcd_refuses_a_client_without_the_api_servers_certificate(etcd_endpoint, cluster_pki):
    # Another component's certificate (the cluster CA, not etcd's) and none at all.
    for credentials in (
        ClientCredentials((cluster_pki.pki / "etcd" / "ca.crt").read_bytes(), *_pair_bytes(cluster_pki, "admin")),
        ClientCredentials((cluster_pki.pki / "etcd" / "ca.crt").read_bytes()),
    ):
        storage = Storage([etcd_endpoint], credentials=credentials, timeout=5)
        await storage.connect()
        try:
            with pytest.raises(Exception) as raised:
                await storage.current_revision()
            assert "UNAVAILABLE" in str(raised.value)
        finally:
            await storage.close()
    storage = Storage([etcd_endpoint], credentials=cluster_pki.etcd_client_credentials(), timeout=5)
    await storage.connect()
    try:
        assert await storage.current_revision() > 0
    finally:
        await storage.close()


def _pair_bytes(pki: ClusterPKI, stem: str) -> tuple[bytes, bytes]:
    certificate, key = pki.pair(stem)
    return certificate.read_bytes(), key.read_bytes()


# -- nodes: what a kubelet's identity may do -----------------------------------------------


def node_credentials(pki: ClusterPKI, node: str) -> ClientCredentials:
    return pki.client_credentials(f"system:node:{node}", ("system:nodes",))


async def test_a_node_cannot_touch_another_nodes_node_or_pods(apiserver, cluster_pki, api, unique_name, namespace):
    node_1, node_2 = f"{unique_name}-1", f"{unique_name}-2"
    await api.create(make_node(node_2))
    pod = await api.create(make_pod("p", namespace, node=node_2))
    client = client_as(apiserver.address, node_credentials(cluster_pki, node_1))
    try:
        other = await api.get(NODES, node_2, "")
        other.status.addresses.append(node_pb2.NodeAddress(type="InternalIP", address="10.9.9.9"))
        refused = await expect_error(grpc.StatusCode.PERMISSION_DENIED, client.update_status(other))
        assert node_1 in refused and node_2 in refused
        stolen = type(pod)()
        stolen.CopyFrom(pod)
        stolen.status.phase = "Failed"
        await expect_error(grpc.StatusCode.PERMISSION_DENIED, client.update_status(stolen))
        await expect_error(grpc.StatusCode.PERMISSION_DENIED, client.create(make_pod("q", namespace, node=node_1)))
        # Its own Node it may register and report.
        await client.create(make_node(node_1))
    finally:
        await client.close()
    assert (await api.get(PODS, "p", namespace)).status.phase == pod.status.phase
    assert not (await api.get(NODES, node_2, "")).status.addresses
    await expect_error(grpc.StatusCode.NOT_FOUND, api.get(PODS, "q", namespace))


# -- joining with a token ------------------------------------------------------------------


def write_bootstrap_kubeconfig(path: Path, server: str, pki: ClusterPKI, token: str) -> Path:
    kubeconfig.write(path, kubeconfig.render(
        cluster="kybernetes", server=server, ca_certificate=pki.ca.certificate_pem, user="bootstrap", token=token,
    ))
    return path


async def test_a_bootstrap_token_gets_a_new_nodes_client_certificate_once(apiserver, cluster_pki, api, unique_name):
    token = cluster_pki.new_bootstrap_token(datetime.timedelta(minutes=10))
    joining = ClientCredentials(cluster_pki.ca.certificate_pem, token=token)
    request, _ = certificate_request(f"system:node:{unique_name}", ["system:nodes"])
    async with aio_channel(apiserver.token_address, joining) as channel:
        stub = certificates_pb2_grpc.CertificatesStub(channel)
        issued = await stub.Sign(certificates_pb2.CertificateSigningRequest(
            request=request, signer_name="kubernetes.io/kube-apiserver-client-kubelet",
        ), timeout=10)
        certificate = x509.load_pem_x509_certificate(issued.certificate)
        assert certificate.subject.rfc4514_string() == f"CN=system:node:{unique_name},O=system:nodes"
        # A token must not mint an admin, nor become a node that already exists.
        admin_request, _ = certificate_request("kubernetes-admin", ["system:masters"])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Sign(certificates_pb2.CertificateSigningRequest(
                request=admin_request, signer_name="kubernetes.io/kube-apiserver-client-kubelet",
            ), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        await api.create(make_node(f"{unique_name}-taken"))
        taken_request, _ = certificate_request(f"system:node:{unique_name}-taken", ["system:nodes"])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Sign(certificates_pb2.CertificateSigningRequest(
                request=taken_request, signer_name="kubernetes.io/kube-apiserver-client-kubelet",
            ), timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "exists" in refused.value.details()


async def test_an_expired_bootstrap_token_is_refused(apiserver, cluster_pki):
    token = cluster_pki.new_bootstrap_token(datetime.timedelta(seconds=-1))
    request, _ = certificate_request("system:node:late", ["system:nodes"])
    late = ClientCredentials(cluster_pki.ca.certificate_pem, token=token)
    async with aio_channel(apiserver.token_address, late) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await certificates_pb2_grpc.CertificatesStub(channel).Sign(certificates_pb2.CertificateSigningRequest(
                request=request, signer_name="kubernetes.io/kube-apiserver-client-kubelet",
            ), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED and "expired" in refused.value.details()


async def test_a_kubelet_joins_with_a_token_and_keeps_its_certificates(
    apiserver, cluster_pki, api, node_name, tmp_path
):
    root = tmp_path  # pytest removes it, keys and all
    token = cluster_pki.new_bootstrap_token(datetime.timedelta(minutes=10))
    bootstrap = write_bootstrap_kubeconfig(root / "bootstrap.conf", apiserver.token_address, cluster_pki, token)
    argv = python_module_argv(
        "services.kubelet.main", "--node-name", node_name, "--server", apiserver.address,
        "--bootstrap-kubeconfig", str(bootstrap), "--root-dir", str(root / "kubelet"),
        # A documentation address (TEST-NET-2) the node only reports: nothing connects to it. A
        # loopback address would be refused: a node may not get a serving certificate that could
        # stand in for a local server.
        "--listen", "127.0.0.1:0", "--node-ip", "198.51.100.10", "--node-status-frequency", "1",
        # No range allocator runs with this API server (--controllers=): the kubelet's own range.
        "--pod-cidr", SHARED_POD_CIDR,
    )
    kubelet = ManagedProcess(f"kubelet-{node_name}", argv, root / "kubelet.log")
    try:
        async def ready() -> bool:
            node = await api.get(NODES, node_name, "")
            return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)

        await eventually(ready, what="the joined node Ready", timeout=60, retry_on=(grpc.aio.AioRpcError,))
        issued = x509.load_pem_x509_certificate((root / "kubelet" / "pki" / "kubelet-client.crt").read_bytes())
        assert issued.subject.rfc4514_string() == f"CN=system:node:{node_name},O=system:nodes"
        written = kubeconfig.load(root / "kubelet" / "pki" / "kubelet.conf")
        assert written.server == apiserver.address and written.user == f"system:node:{node_name}"
        log = (root / "kubelet.log").read_text()
        assert "client_certificate_obtained" in log and "serving_certificate_obtained" in log
        # Restarted, it uses what it has: the token (it may have expired by then) is not asked again.
        kubelet.stop()
        kubelet = ManagedProcess(f"kubelet-{node_name}", argv, root / "kubelet-2.log")
        await eventually(lambda: "kubelet_started" in (root / "kubelet-2.log").read_text(), what="restarted",
                         timeout=30, retry_on=(OSError,))
        assert "certificate_obtained" not in (root / "kubelet-2.log").read_text()
    finally:
        kubelet.stop()
        await api.delete(NODES, node_name, "")


# -- what a node may read (Kubernetes' AuthorizeNodeWithSelectors) --------------------------


async def test_a_node_reads_only_its_own_pods_and_node(apiserver, cluster_pki, api, unique_name, namespace):
    node_1, node_2 = f"{unique_name}-1", f"{unique_name}-2"
    for name in (node_1, node_2):
        await api.create(make_node(name))
    mine = await api.create(make_pod("mine", namespace, node=node_1))
    await api.create(make_pod("theirs", namespace, node=node_2))
    client = client_as(apiserver.address, node_credentials(cluster_pki, node_1))
    try:
        own = f"spec.nodeName={node_1}"
        listed = await client.list(PODS, namespace, field_selector=own)
        assert [pod.metadata.name for pod in listed.items] == ["mine"]
        listed = await client.list(PODS, field_selector=f"{own},status.phase!=Failed")
        assert [pod.metadata.name for pod in listed.items] == ["mine"]
        # Without its selector, or with another node's, the read is refused naming the selector it needs.
        for selector in ("", f"spec.nodeName={node_2}"):
            refused = await expect_error(
                grpc.StatusCode.PERMISSION_DENIED, client.list(PODS, namespace, field_selector=selector)
            )
            assert f'node "{node_1}" may list pods only with fieldSelector {own}' in refused
        watch = client.watch(PODS, meta_pb2.ListOptions(namespace=namespace))
        with pytest.raises(grpc.aio.AioRpcError) as unscoped:
            await watch.read()
        assert unscoped.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"may watch pods only with fieldSelector {own}" in (unscoped.value.details() or "")
        # One pod by name: its own (once the server's watch cache holds it), not another node's.
        got = await eventually(
            lambda: client.get(PODS, "mine", namespace), what="its own pod readable", retry_on=(grpc.aio.AioRpcError,)
        )
        assert got.metadata.uid == mine.metadata.uid
        refused = await expect_error(grpc.StatusCode.PERMISSION_DENIED, client.get(PODS, "theirs", namespace))
        assert f'node "{node_1}" may get only pods bound to itself' in refused and node_2 not in refused
        # Its own Node, by name or by a metadata.name selector; no other.
        assert (await client.get(NODES, node_1, "")).metadata.name == node_1
        listed = await client.list(NODES, field_selector=f"metadata.name={node_1}")
        assert [node.metadata.name for node in listed.items] == [node_1]
        refused = await expect_error(grpc.StatusCode.PERMISSION_DENIED, client.list(NODES))
        assert f"may list nodes only with fieldSelector metadata.name={node_1}" in refused
        refused = await expect_error(grpc.StatusCode.PERMISSION_DENIED, client.get(NODES, node_2, ""))
        assert f'node "{node_1}" may get only its own Node' in refused
    finally:
        await client.close()
        for name in (node_1, node_2):
            await api.delete(NODES, name, "")


# -- the kubelet's own API -----------------------------------------------------------------


async def test_the_kubelets_api_answers_only_callers_the_cluster_authorizes(apiserver, cluster_pki, node_name):
    kubelet = KubeletProcess(node_name, server=apiserver.address)
    try:
        async def list_pods(credentials: ClientCredentials) -> grpc.StatusCode:
            async with kubelet.channel(credentials) as channel:
                try:
                    request = kubelet_pb2.KubeletListPodsRequest()
                    await kubelet_pb2_grpc.KubeletStub(channel).ListPods(request, timeout=10)
                except grpc.aio.AioRpcError as error:
                    return error.code()
            return grpc.StatusCode.OK

        # The API server's client identity and an admin may; another node and a user may not.
        assert await list_pods(cluster_pki.credentials("apiserver-kubelet-client")) == grpc.StatusCode.OK
        assert await list_pods(cluster_pki.credentials("admin")) == grpc.StatusCode.OK
        other_node = node_credentials(cluster_pki, f"{node_name}-other")
        assert await list_pods(other_node) == grpc.StatusCode.PERMISSION_DENIED
        assert await list_pods(cluster_pki.client_credentials("jane")) == grpc.StatusCode.PERMISSION_DENIED
        # A certificate from another CA does not get through the TLS handshake.
        stranger_ca = CertificateAuthority.create("not-the-cluster-ca")
        stranger = stranger_ca.issue("kubernetes-admin", organizations=["system:masters"])
        foreign = ClientCredentials(cluster_pki.ca.certificate_pem, stranger.certificate, stranger.key)
        assert await list_pods(foreign) == grpc.StatusCode.UNAVAILABLE
    finally:
        kubelet.stop()
        kubelet.cleanup()

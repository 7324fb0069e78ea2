"""The API as a user without our code sees it: grpcurl with server reflection."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.transport import ClientCredentials, blocking_channel
from tools.processes import dev_pki

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def grpcurl(
    address: str, *args: str, data: str | None = None, auth: list[str] | None = None
) -> subprocess.CompletedProcess:
    """grpcurl as the README shows it: the cluster CA, and the admin's client certificate
    (or `auth`: other credentials flags)."""
    pki = dev_pki()
    if auth is None:
        cert, key = pki.pair("admin")
        auth = ["-cert", str(cert), "-key", str(key)]
    argv = [GRPCURL, "-cacert", str(pki.ca_file), *auth]
    if data is not None:
        argv += ["-d", data]
    return subprocess.run(argv + [address, *args], capture_output=True, text=True, timeout=30)


def test_list_and_describe_services_without_proto_files(apiserver):
    listed = grpcurl(apiserver.address, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {
        "kybernetes.v1.PodRegistry",
        "kybernetes.v1.ServiceRegistry",
        "kybernetes.v1.EndpointsRegistry",
        "kybernetes.v1.ReplicationControllerRegistry",
        "kybernetes.v1.NodeRegistry",
        "grpc.health.v1.Health",
    } <= services
    described = grpcurl(apiserver.address, "describe", "kybernetes.v1.PodRegistry")
    assert described.returncode == 0, described.stderr
    for rpc in ("Create", "Get", "List", "Update", "Delete", "Watch", "Bind", "UpdateStatus"):
        assert f"rpc {rpc} " in described.stdout
    message = grpcurl(apiserver.address, "describe", "kybernetes.v1.ContainerPort")
    assert "container_port" in message.stdout


def test_health_check(apiserver):
    checked = grpcurl(apiserver.address, "grpc.health.v1.Health/Check")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["status"] == "SERVING"


def test_create_and_get_a_pod_from_kubernetes_json(apiserver, namespace):
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "hello", "namespace": namespace, "labels": {"app": "hello"}},
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "kybernetes/busybox:latest",
                    "command": ["httpd", "-f", "-p", "8080"],
                    "ports": [{"containerPort": 8080, "name": "http"}],
                }
            ]
        },
    }
    created = grpcurl(apiserver.address, "kybernetes.v1.PodRegistry/Create", data=json.dumps(manifest))
    assert created.returncode == 0, created.stderr
    pod = json.loads(created.stdout)
    assert pod["metadata"]["uid"] and pod["status"]["phase"] == "Pending"

    fetched = grpcurl(
        apiserver.address, "kybernetes.v1.PodRegistry/Get", data=json.dumps({"namespace": namespace, "name": "hello"})
    )
    assert fetched.returncode == 0, fetched.stderr
    got = json.loads(fetched.stdout)
    assert got["metadata"]["uid"] == pod["metadata"]["uid"]
    assert got["spec"]["containers"][0]["ports"][0]["container_port"] == 8080

    listed = grpcurl(
        apiserver.address,
        "kybernetes.v1.PodRegistry/List",
        data=json.dumps({"namespace": namespace, "labelSelector": "app in (hello)"}),
    )
    assert [item["metadata"]["name"] for item in json.loads(listed.stdout)["items"]] == ["hello"]


def test_errors_carry_status_and_field(apiserver, namespace):
    missing = grpcurl(
        apiserver.address, "kybernetes.v1.PodRegistry/Get", data=json.dumps({"namespace": namespace, "name": "nope"})
    )
    assert missing.returncode != 0 and "NotFound" in missing.stderr and '"nope" not found' in missing.stderr
    invalid = grpcurl(
        apiserver.address,
        "kybernetes.v1.PodRegistry/Create",
        data=json.dumps({"metadata": {"name": "x", "namespace": namespace}, "spec": {"containers": [{"name": "c"}]}}),
    )
    assert invalid.returncode != 0 and "InvalidArgument" in invalid.stderr
    assert "spec.containers[0].image" in invalid.stderr


# -- credentials, as the README shows them ---------------------------------------------


def session_token() -> str:
    _, token = dev_pki().ensure_token_file()
    return token


def test_bearer_token_on_the_token_port(apiserver, namespace):
    bearer = ["-H", f"authorization: Bearer {session_token()}"]
    listed = grpcurl(apiserver.token_address, "list", auth=bearer)
    assert listed.returncode == 0, listed.stderr
    assert "kybernetes.v1.PodRegistry" in listed.stdout.split()


def test_no_credentials_are_unauthenticated_but_health_answers(apiserver):
    # The token port asks for no certificate: a caller with nothing gets a clear refusal...
    listed = grpcurl(apiserver.token_address, "kybernetes.v1.NodeRegistry/List", data="{}", auth=[])
    assert listed.returncode != 0
    assert "Unauthenticated" in listed.stderr and "no credentials" in listed.stderr
    # ...and a probe (a health client, which needs no reflection) still gets the health check.
    anonymous = ClientCredentials(dev_pki().ca.certificate_pem)
    with blocking_channel(apiserver.token_address, anonymous) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # Reflection, like everything else, wants an authenticated caller.
    assert "no credentials" in grpcurl(apiserver.token_address, "list", auth=[]).stderr


def test_a_wrong_token_is_refused_whatever_it_calls(apiserver):
    wrong = ["-H", "authorization: Bearer not-a-token"]
    for method in ("kybernetes.v1.NodeRegistry/List", "grpc.health.v1.Health/Check"):
        called = grpcurl(apiserver.token_address, method, data="{}", auth=wrong)
        assert called.returncode != 0 and "Unauthenticated" in called.stderr
        assert "invalid bearer token" in called.stderr


def test_the_certificate_port_refuses_a_caller_without_a_certificate(apiserver):
    called = grpcurl(apiserver.address, "kybernetes.v1.NodeRegistry/List", data="{}", auth=[])
    assert called.returncode != 0  # the TLS handshake fails: no call is made
    assert "Unauthenticated" not in called.stdout

"""kubecfg's argument handling and error lines, without a server."""

from __future__ import annotations

import grpc
import pytest

from kybernetes.v1 import node_pb2, pod_pb2

from services.common.manifests import Manifest
from services.common.resources import NODES, PODS, REPLICATION_CONTROLLERS, SERVICES
from services.kubecfg import commands
from services.kubecfg.commands import CommandError, ResourceRequest, parse_resources
from services.kubecfg.errors import server_error, unreachable
from services.kubecfg.main import build_parser, main


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["po"], [ResourceRequest(PODS)]),
        (["pods", "a", "b"], [ResourceRequest(PODS, ("a", "b"))]),
        (["svc,rc"], [ResourceRequest(SERVICES), ResourceRequest(REPLICATION_CONTROLLERS)]),
        (["all"], [ResourceRequest(PODS), ResourceRequest(SERVICES), ResourceRequest(REPLICATION_CONTROLLERS)]),
        (["rc/web", "pod/x", "replicationcontroller/api"],
         [ResourceRequest(REPLICATION_CONTROLLERS, ("web", "api")), ResourceRequest(PODS, ("x",))]),
        (["no", "node-1"], [ResourceRequest(NODES, ("node-1",))]),
        (["Pod"], [ResourceRequest(PODS)]),
    ],
)
def test_resource_forms(args: list[str], expected: list[ResourceRequest]) -> None:
    assert parse_resources(args) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["deployments"], 'the server doesn\'t have a resource type "deployments"'),
        (["po,svc", "x"], "only one resource type when specifying names"),
        (["pods", "rc/x"], "no need to specify a resource type"),
        (["rc/"], "must have a single resource and name"),
    ],
)
def test_resource_errors(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        parse_resources(args)


def test_flags_before_or_after_the_verb() -> None:
    parser = build_parser()
    after = parser.parse_args(["get", "pods", "-n", "shop", "--server", "h:1", "-l", "tier in (a,b)", "-o", "wide"])
    assert (after.namespace, after.server, after.selector, after.output) == ("shop", "h:1", "tier in (a,b)", "wide")
    before = parser.parse_args(["-n", "shop", "--server", "h:1", "get", "pods"])
    assert (before.namespace, before.server) == ("shop", "h:1")
    default = parser.parse_args(["get", "pods"])
    assert (default.namespace, default.server) == (None, None)
    delete = parser.parse_args(["delete", "rc", "web", "--cascade=false", "--ignore-not-found"])
    assert delete.cascade == "false" and delete.ignore_not_found is True and delete.wait is True
    assert parser.parse_args(["delete", "po", "x", "--wait=false"]).wait is False
    assert (delete.grace_period, delete.force, delete.now) == (-1, False, False)
    graceful = parser.parse_args(["delete", "po", "x", "--grace-period=5"])
    assert graceful.grace_period == 5
    forced = parser.parse_args(["delete", "po", "x", "--force", "--grace-period", "0"])
    assert (forced.force, forced.grace_period) == (True, 0)
    assert parser.parse_args(["delete", "po", "x", "--now"]).now is True
    assert parser.parse_args(["scale", "rc", "web", "--replicas=3"]).replicas == 3


def test_usage_errors_exit_non_zero_with_one_error_line(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["get", "pods", "-o", "table"])
    assert caught.value.code == 1
    assert capsys.readouterr().err.startswith("error: argument -o/--output: invalid choice")
    with pytest.raises(SystemExit):
        main(["scale", "rc", "web"])  # --replicas is required
    assert "--replicas" in capsys.readouterr().err


def test_errors_before_any_request(capsys) -> None:
    assert main(["--server", "127.0.0.1:1", "get", "widgets"]) == 1
    assert capsys.readouterr().err == 'error: the server doesn\'t have a resource type "widgets"\n'
    assert main(["--server", "127.0.0.1:1", "delete", "pods"]) == 1
    assert "no name was specified" in capsys.readouterr().err
    assert main(["--server", "127.0.0.1:1", "scale", "po", "x", "--replicas", "2"]) == 1
    assert "only replicationcontrollers" in capsys.readouterr().err
    assert main(["--server", "127.0.0.1:1", "delete", "rc", "x", "--cascade=sideways"]) == 1
    assert 'invalid cascade value "sideways"' in capsys.readouterr().err


def test_server_error_lines() -> None:
    assert server_error(rpc_error(grpc.StatusCode.NOT_FOUND, "x"), PODS, "web") == (
        'Error from server (NotFound): pods "web" not found'
    )
    assert server_error(
        rpc_error(grpc.StatusCode.ALREADY_EXISTS, "x"), SERVICES, "web", action="creating", origin="app.yaml"
    ) == 'Error from server (AlreadyExists): error when creating "app.yaml": services "web" already exists'
    assert server_error(rpc_error(grpc.StatusCode.ABORTED, "stale"), REPLICATION_CONTROLLERS, "web") == (
        'Error from server (Conflict): Operation cannot be fulfilled on replicationcontrollers "web": stale'
    )
    assert server_error(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "spec.replicas: must be >= 0"),
                        REPLICATION_CONTROLLERS, "web") == (
        'Error from server (Invalid): ReplicationController "web" is invalid: spec.replicas: must be >= 0'
    )
    already_named = 'Pod "web" is invalid: spec.containers[0].image: Required value'
    assert server_error(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, already_named), PODS, "web") == (
        f"Error from server (Invalid): {already_named}"
    )


def test_a_server_out_of_reach_and_a_server_whose_storage_is_out_of_reach_read_differently() -> None:
    refused = rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; Connection refused")
    assert str(unreachable(refused, "the API server", "127.0.0.1:6443")) == (
        "error: cannot reach the API server at 127.0.0.1:6443: connection refused"
    )
    storage_down = rpc_error(grpc.StatusCode.UNAVAILABLE, "etcd: UNAVAILABLE: etcdserver: no leader")
    assert str(unreachable(storage_down, "the API server", "127.0.0.1:6443")) == (
        "Error from server (ServiceUnavailable): etcd: UNAVAILABLE: etcdserver: no leader"
    )


def test_manifest_namespace_must_agree_with_flag(tmp_path) -> None:
    ctx = commands.Context(client=None, namespace="shop", namespace_given=True)  # type: ignore[arg-type]
    pod = pod_pb2.Pod(metadata={"name": "a", "namespace": "other"})
    with pytest.raises(CommandError, match="does not match the namespace \"shop\""):
        commands.place(ctx, Manifest(pod, "p.yaml[0]", "p.yaml"))
    unplaced = pod_pb2.Pod(metadata={"name": "a"})
    assert commands.place(ctx, Manifest(unplaced, "p.yaml[0]", "p.yaml"))[1].metadata.namespace == "shop"
    node = node_pb2.Node(metadata={"name": "n", "namespace": "shop"})
    assert commands.place(ctx, Manifest(node, "n.yaml[0]", "n.yaml"))[1].metadata.namespace == ""


def test_apply_update_keeps_identity_and_status() -> None:
    applied = pod_pb2.Pod(metadata={"name": "a", "labels": {"v": "2"}})
    applied.metadata.annotations[commands.LAST_APPLIED_ANNOTATION] = commands.last_applied(applied)
    stored = pod_pb2.Pod(metadata={"name": "a", "uid": "u1", "resource_version": 9, "generation": 3})
    stored.status.phase = "Running"
    desired = commands.desired_update(applied, stored, PODS)
    assert (desired.metadata.uid, desired.metadata.resource_version, desired.status.phase) == ("u1", 9, "Running")
    assert desired.metadata.labels["v"] == "2"
    # The recorded configuration does not include itself.
    assert commands.LAST_APPLIED_ANNOTATION not in commands.last_applied(applied)


def test_logs_helpers() -> None:
    pod = pod_pb2.Pod(metadata={"name": "web"})
    pod.spec.containers.add(name="app")
    assert commands.pick_container(pod, "") == "app"
    pod.spec.containers.add(name="sidecar")
    with pytest.raises(CommandError, match=r"choose one of: \[app sidecar\]"):
        commands.pick_container(pod, "")
    with pytest.raises(CommandError, match="container db is not valid for pod web"):
        commands.pick_container(pod, "db")
    node = node_pb2.Node(metadata={"name": "n1"})
    node.status.addresses.add(type="Hostname", address="n1.local")
    assert commands.kubelet_address(node) == "n1.local:10250"
    node.status.addresses.add(type="InternalIP", address="fd00::5")
    node.status.daemon_endpoints.kubelet_endpoint.port = 10300
    assert commands.kubelet_address(node) == "[fd00::5]:10300"


def test_cascade_values() -> None:
    assert commands.propagation_policy("false") == "Orphan"
    assert commands.propagation_policy("orphan") == "Orphan"
    assert commands.propagation_policy("true") == "Background"
    assert commands.propagation_policy("foreground") == "Foreground"
    with pytest.raises(CommandError):
        commands.propagation_policy("sideways")

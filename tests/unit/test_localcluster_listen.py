"""Where `make up`'s API server listens: the REST API on the same addresses as gRPC (loopback,
the host network's gateway, --api-address), each named by the API server's certificate."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509

from tools import localcluster


def planned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> localcluster.ClusterPlan:
    """The plan `make up` would run with these arguments (nothing started)."""
    captured: list[argparse.Namespace] = []
    monkeypatch.setattr(localcluster, "up", lambda parsed: captured.append(parsed) or 0)
    with pytest.raises(SystemExit):
        localcluster.main(["up", "--state-dir", str(tmp_path), "--user-kubeconfig", "", *args])
    [parsed] = captured
    return localcluster.plan_cluster(parsed)


def flag(argv: list[str], name: str) -> list[str]:
    return argv[argv.index(name) + 1].split(",")


@pytest.mark.parametrize("ha", [False, True])
def test_rest_api_listens_where_grpc_does_and_the_certificate_names_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ha: bool
) -> None:
    plan = planned(monkeypatch, tmp_path, "--api-address", "192.0.2.10", "--api-port", "16443", "--rest-port", "16543",
                   *(["--ha"] if ha else []))
    servers = [c for c in plan.components if c.name.startswith("apiserver")]
    assert len(servers) == (2 if ha else 1)
    gateway = plan.host_network.gateway
    for index, server in enumerate(servers):
        grpc_hosts = [address.rpartition(":")[0] for address in flag(server.args, "--listen")]
        assert grpc_hosts == ["127.0.0.1", gateway, "192.0.2.10"]
        assert flag(server.args, "--rest-listen") == [f"{host}:{16543 + 2 * index}" for host in grpc_hosts]
    certificate = x509.load_pem_x509_certificate((tmp_path / "pki" / "apiserver.crt").read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {ipaddress.ip_address(host) for host in grpc_hosts} <= set(names.get_values_for_type(x509.IPAddress))

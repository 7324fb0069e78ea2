"""TLS for every gRPC connection of the cluster: what a client proves and trusts, and
what a server presents and asks for.

grpcio can ask a client for a certificate only by requiring one ("require client auth"),
never "verify one if given" as Go's servers do. So a server that takes both client
certificates and bearer tokens listens twice: a port that requires a certificate signed
by the cluster CA, and a port that presents its certificate but asks for none (bearer
tokens, bootstrap tokens, and the health check). Both serve the same handlers.
"""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import grpc


# Channel options that reconnect within about a second of a server's return (gRPC's
# default back-off grows to 120 s): etcd for the API server, the API server for every client.
# Not grpc.min_reconnect_backoff_ms: gRPC's core takes it as the connect timeout too, and a
# TLS handshake on a busy machine needs more than a fraction of a second.
FAST_RECONNECT: list[tuple[str, object]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


@dataclass(frozen=True)
class ClientCredentials:
    """What a client trusts (the cluster CA) and how it proves who it is: a client
    certificate and key, a bearer token, or both."""

    ca_certificate: bytes
    certificate: bytes | None = None
    key: bytes | None = None
    token: str | None = None

    def channel_credentials(self) -> grpc.ChannelCredentials:
        credentials = grpc.ssl_channel_credentials(self.ca_certificate, self.key, self.certificate)
        if self.token:
            # Sent as `authorization: Bearer <token>` on every call, only over TLS.
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(self.token)
            )
        return credentials

    @classmethod
    def from_files(
        cls, ca_file: str | Path, cert_file: str | Path | None = None, key_file: str | Path | None = None
    ) -> ClientCredentials:
        return cls(
            Path(ca_file).read_bytes(),
            Path(cert_file).read_bytes() if cert_file else None,
            Path(key_file).read_bytes() if key_file else None,
        )


def server_addresses(target: str) -> list[str]:
    """The HOST:PORT addresses of a target: one, or several comma-separated (replicas of one
    server: several API servers, the members of an etcd cluster)."""
    return [address.strip() for address in target.split(",") if address.strip()]


def channel_target(target: str) -> tuple[str, list[tuple[str, object]]]:
    """gRPC's target and the options it needs, for one address or several.

    Several become an `ipv4:` list that gRPC balances calls and watches over (round robin)
    and fails over across within a connection attempt: a replica that dies is skipped, its
    streams break and their clients resume on another. The replicas share one serving
    certificate, so TLS checks the first address's name for all of them."""
    addresses = server_addresses(target)
    if not addresses:
        raise ValueError("no server address given")
    if len(addresses) == 1:
        return addresses[0], []
    hosts = [address.rpartition(":")[0] for address in addresses]
    for address, host in zip(addresses, hosts, strict=True):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{address}: several servers must be given as IPv4 HOST:PORT addresses") from None
    return "ipv4:" + ",".join(addresses), [
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.ssl_target_name_override", hosts[0]),
        ("grpc.default_authority", addresses[0]),
    ]


def aio_channel(
    target: str, credentials: ClientCredentials | None, options: Sequence[tuple[str, object]] = ()
) -> grpc.aio.Channel:
    """A channel that verifies the server (and presents credentials); plaintext only
    when no credentials were given (a server run with --insecure-dev). `target`: one
    HOST:PORT, or several comma-separated replicas (channel_target)."""
    target, extra = channel_target(target)
    options = [*options, *extra]
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials.channel_credentials(), options=options)


def blocking_channel(
    target: str, credentials: ClientCredentials | None, options: Sequence[tuple[str, object]] = ()
) -> grpc.Channel:
    target, extra = channel_target(target)
    options = [*options, *extra]
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials.channel_credentials(), options=options)


@dataclass(frozen=True)
class ServingCertificate:
    """A server's certificate and key, and the CA its clients' certificates must chain to."""

    certificate: bytes
    key: bytes
    client_ca: bytes | None = None

    def server_credentials(self, *, require_client_certificate: bool) -> grpc.ServerCredentials:
        if require_client_certificate and self.client_ca is None:
            raise ValueError("--client-ca-file is needed to verify client certificates")
        return grpc.ssl_server_credentials(
            [(self.key, self.certificate)],
            root_certificates=self.client_ca if require_client_certificate else None,
            require_client_auth=require_client_certificate,
        )

    @classmethod
    def from_files(
        cls, cert_file: str | Path, key_file: str | Path, client_ca_file: str | Path | None
    ) -> ServingCertificate:
        return cls(
            Path(cert_file).read_bytes(),
            Path(key_file).read_bytes(),
            Path(client_ca_file).read_bytes() if client_ca_file else None,
        )


def add_serving_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, what: str) -> None:
    """--tls-cert-file, --tls-private-key-file and --client-ca-file, Kubernetes' names."""
    parser.add_argument("--tls-cert-file", default=None, metavar="FILE", help=f"PEM certificate {what} serves with")
    parser.add_argument("--tls-private-key-file", default=None, metavar="FILE", help="PEM key of --tls-cert-file")
    parser.add_argument(
        "--client-ca-file",
        default=None,
        metavar="FILE",
        help="PEM CA that callers' client certificates must be signed by",
    )


def serving_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ServingCertificate | None:
    """The serving certificate the flags name; None only with --insecure-dev. A usage
    error (the process exits 2) when they are missing or unreadable."""
    if getattr(args, "insecure_dev", False):
        return None
    missing = [
        flag
        for flag, value in (
            ("--tls-cert-file", args.tls_cert_file),
            ("--tls-private-key-file", args.tls_private_key_file),
            ("--client-ca-file", args.client_ca_file),
        )
        if not value
    ]
    if missing:
        parser.error(f"{', '.join(missing)} required: every connection is TLS (--insecure-dev only for development)")
    try:
        return ServingCertificate.from_files(args.tls_cert_file, args.tls_private_key_file, args.client_ca_file)
    except OSError as error:
        parser.error(f"cannot read a TLS file: {error}")

"""The cluster's certificates and kubeconfigs on disk, as `make up` and the tests make them.

kubeadm's layout, in a state directory:

    pki/ca.{crt,key}                       the cluster CA: every component's identity
    pki/etcd/ca.{crt,key}                  etcd's own CA, so that only the API server's
    pki/etcd/server.{crt,key}              client certificate (signed by it) opens etcd:
    pki/apiserver-etcd-client.{crt,key}    no kubelet or user certificate is accepted there
    pki/apiserver.{crt,key}                the API server's serving certificate
    pki/<user>.{crt,key}                   admin, controller-manager, kube-proxy, kube-dns,
                                           apiserver-kubelet-client
    pki/nodes/<node>/kubelet-client.{crt,key}, kubelet.{crt,key}, kube-proxy.{crt,key}
    <name>.conf                            a kubeconfig per client identity

Made once and kept: a later `make up` reuses what is there and still valid for its
names, so kubeconfigs handed out stay good.
"""

from __future__ import annotations

import datetime
import secrets
from dataclasses import dataclass
from pathlib import Path

from services.common import kubeconfig
from services.common.identity import SYSTEM_MASTERS, SYSTEM_NODES
from services.common.pki import CLIENT, SERVER, CertificateAuthority, still_good
from services.common.transport import ClientCredentials

CLUSTER_NAME = "kybernetes"
# Renewed by the next `make up` when this close to expiry.
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Identity:
    """A client identity: its file stem, user name and groups (Kubernetes' names)."""

    stem: str
    user: str
    groups: tuple[str, ...] = ()


ADMIN = Identity("admin", "kubernetes-admin", (SYSTEM_MASTERS,))
CONTROLLER_MANAGER = Identity("controller-manager", "system:kube-controller-manager")
KUBE_PROXY = Identity("kube-proxy", "system:kube-proxy")
KUBE_DNS = Identity("kube-dns", "system:kube-dns")
APISERVER_KUBELET_CLIENT = Identity("apiserver-kubelet-client", "kube-apiserver-kubelet-client")
CLIENT_IDENTITIES = (ADMIN, CONTROLLER_MANAGER, KUBE_PROXY, KUBE_DNS, APISERVER_KUBELET_CLIENT)
LOOPBACK_NAMES = ("localhost", "127.0.0.1")


def _still_good(pair_dir: Path, stem: str, names: tuple[str, ...], subject: tuple[str, tuple[str, ...]] | None) -> bool:
    """True if <stem>.crt and its key exist, it is not near expiry, covers `names` and names `subject`."""
    path = pair_dir / f"{stem}.crt"
    if not path.exists() or not (pair_dir / f"{stem}.key").exists():
        return False
    return still_good(path.read_bytes(), renew_before=RENEW_BEFORE, names=names, subject=subject)


class ClusterPKI:
    """The certificates of one cluster under `root` (the state directory)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.pki = self.root / "pki"
        self.ca = CertificateAuthority.load_or_create(self.pki, "ca", "kybernetes-ca")
        self.etcd_ca = CertificateAuthority.load_or_create(self.pki / "etcd", "ca", "kybernetes-etcd-ca")

    # -- issuing --------------------------------------------------------------

    def _ensure(
        self,
        ca: CertificateAuthority,
        directory: Path,
        stem: str,
        user: str,
        groups: tuple[str, ...] = (),
        *,
        names: tuple[str, ...] = (),
        usages: tuple[str, ...] = (CLIENT,),
    ) -> tuple[Path, Path]:
        if not _still_good(directory, stem, names, (user, groups)):
            ca.issue(user, organizations=groups, names=names, usages=usages).write(directory, stem)
        return directory / f"{stem}.crt", directory / f"{stem}.key"

    def ensure_control_plane(self, apiserver_names: tuple[str, ...] = ()) -> None:
        """etcd's, the API server's and every control-plane client's certificates."""
        names = tuple(
            dict.fromkeys(
                (*LOOPBACK_NAMES, "kubernetes", "kubernetes.default", "kubernetes.default.svc", *apiserver_names)
            )
        )
        self._ensure(
            self.etcd_ca, self.pki / "etcd", "server", "kybernetes-etcd", names=LOOPBACK_NAMES, usages=(SERVER, CLIENT)
        )
        self._ensure(self.etcd_ca, self.pki, "apiserver-etcd-client", "kube-apiserver-etcd-client")
        self._ensure(self.ca, self.pki, "apiserver", "kube-apiserver", names=names, usages=(SERVER,))
        for identity in CLIENT_IDENTITIES:
            self._ensure(
                self.ca,
                self.pki,
                identity.stem,
                identity.user,
                identity.groups,
                names=LOOPBACK_NAMES,
                usages=(CLIENT, SERVER),
            )

    def node_dir(self, node: str) -> Path:
        return self.pki / "nodes" / node

    def ensure_node(self, node: str, addresses: tuple[str, ...] = ()) -> Path:
        """A node's kubelet client and serving certificates and its proxy's."""
        directory = self.node_dir(node)
        names = tuple(dict.fromkeys((node, *LOOPBACK_NAMES, *addresses)))
        self._ensure(self.ca, directory, "kubelet-client", f"system:node:{node}", (SYSTEM_NODES,))
        self._ensure(
            self.ca, directory, "kubelet", f"system:node:{node}", (SYSTEM_NODES,), names=names, usages=(SERVER,)
        )
        self._ensure(self.ca, directory, "kube-proxy", KUBE_PROXY.user, names=names, usages=(CLIENT, SERVER))
        return directory

    # -- files components read ------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    def pair(self, stem: str, directory: Path | None = None) -> tuple[Path, Path]:
        where = directory or self.pki
        return where / f"{stem}.crt", where / f"{stem}.key"

    def etcd_client_credentials(self) -> ClientCredentials:
        """The API server's etcd client certificate: the only one etcd accepts."""
        certificate, key = self.pair("apiserver-etcd-client")
        return ClientCredentials.from_files(self.pki / "etcd" / "ca.crt", certificate, key)

    def credentials(self, stem: str, directory: Path | None = None) -> ClientCredentials:
        certificate, key = self.pair(stem, directory)
        return ClientCredentials.from_files(self.ca_file, certificate, key)

    def client_credentials(self, user: str, groups: tuple[str, ...] = ()) -> ClientCredentials:
        """A fresh certificate for any user (tests: `view` users, nodes, strangers)."""
        pair = self.ca.issue(user, organizations=groups)
        return ClientCredentials(self.ca.certificate_pem, pair.certificate, pair.key)

    def write_kubeconfig(self, name: str, server: str, credentials: ClientCredentials, user: str) -> Path:
        path = self.root / f"{name}.conf"
        kubeconfig.write(
            path,
            kubeconfig.render(
                cluster=CLUSTER_NAME,
                server=server,
                ca_certificate=credentials.ca_certificate,
                user=user,
                certificate=credentials.certificate,
                key=credentials.key,
                token=credentials.token,
            ),
        )
        return path

    def write_client_kubeconfigs(self, server: str) -> dict[str, Path]:
        """admin.conf, controller-manager.conf, kube-proxy.conf, kube-dns.conf."""
        return {
            identity.stem: self.write_kubeconfig(identity.stem, server, self.credentials(identity.stem), identity.user)
            for identity in (ADMIN, CONTROLLER_MANAGER, KUBE_PROXY, KUBE_DNS)
        }

    def write_node_kubeconfig(self, node: str, server: str) -> Path:
        directory = self.node_dir(node)
        return self.write_kubeconfig(
            f"kubelet-{node}", server, self.credentials("kubelet-client", directory), f"system:node:{node}"
        )

    # -- flags --------------------------------------------------------------------

    def etcd_flags(self) -> list[str]:
        """etcd serves TLS and accepts only certificates from its own CA, on both ports."""
        server_cert, server_key = self.pair("server", self.pki / "etcd")
        etcd_ca = self.pki / "etcd" / "ca.crt"
        return [
            "--cert-file",
            str(server_cert),
            "--key-file",
            str(server_key),
            "--client-cert-auth",
            "--trusted-ca-file",
            str(etcd_ca),
            "--peer-cert-file",
            str(server_cert),
            "--peer-key-file",
            str(server_key),
            "--peer-client-cert-auth",
            "--peer-trusted-ca-file",
            str(etcd_ca),
        ]

    def apiserver_flags(self, *, token_file: Path | None = None, bootstrap_token_file: Path | None = None) -> list[str]:
        cert, key = self.pair("apiserver")
        etcd_cert, etcd_key = self.pair("apiserver-etcd-client")
        kubelet_cert, kubelet_key = self.pair(APISERVER_KUBELET_CLIENT.stem)
        flags = [
            "--tls-cert-file",
            str(cert),
            "--tls-private-key-file",
            str(key),
            "--client-ca-file",
            str(self.ca_file),
            "--etcd-cafile",
            str(self.pki / "etcd" / "ca.crt"),
            "--etcd-certfile",
            str(etcd_cert),
            "--etcd-keyfile",
            str(etcd_key),
            "--cluster-signing-cert-file",
            str(self.ca_file),
            "--cluster-signing-key-file",
            str(self.pki / "ca.key"),
            "--kubelet-client-certificate",
            str(kubelet_cert),
            "--kubelet-client-key",
            str(kubelet_key),
        ]
        if token_file is not None:
            flags += ["--token-auth-file", str(token_file)]
        if bootstrap_token_file is not None:
            flags += ["--bootstrap-token-file", str(bootstrap_token_file)]
        return flags

    def serving_flags(self, stem: str, directory: Path | None = None) -> list[str]:
        cert, key = self.pair(stem, directory)
        return ["--tls-cert-file", str(cert), "--tls-private-key-file", str(key), "--client-ca-file", str(self.ca_file)]

    # -- tokens -------------------------------------------------------------------

    def ensure_token_file(self, user: str = "kybernetes-user", groups: tuple[str, ...] = ()) -> tuple[Path, str]:
        """A static token file with one token for `user` (scripts, grpcurl with a bearer
        header); the token is kept across `make up`s."""
        path = self.pki / "tokens.csv"
        if path.exists():
            first = path.read_text().splitlines()[0]
            return path, first.split(",")[0]
        token = secrets.token_hex(24)
        joined = ",".join(groups)
        kubeconfig.write(path, f'{token},{user},{user},"{joined}"\n')
        return path, token

    def new_bootstrap_token(self, ttl: datetime.timedelta = datetime.timedelta(hours=24)) -> str:
        """Appends a join token (kubeadm's shape, <6>.<16>) valid for `ttl`; returns it."""
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
        token = (
            "".join(secrets.choice(alphabet) for _ in range(6))
            + "."
            + "".join(secrets.choice(alphabet) for _ in range(16))
        )
        expires = (datetime.datetime.now(datetime.timezone.utc) + ttl).strftime("%Y-%m-%dT%H:%M:%SZ")
        path = self.bootstrap_token_file
        existing = path.read_text() if path.exists() else ""
        kubeconfig.write(path, existing + f"{token},{expires}\n")
        return token

    @property
    def bootstrap_token_file(self) -> Path:
        return self.pki / "bootstrap-tokens"


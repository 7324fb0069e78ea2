"""Client configuration in kubeconfig's shape: clusters, users, contexts.

Every client of the API server (kubecfg, the kubelet, the proxy, the replicator, the
DNS server, the in-process controllers) reads one: the server's address, the CA to trust
it by, and the client certificate or bearer token to prove who it is. The file is
kubectl's format (`certificate-authority-data`, `client-certificate-data`,
`client-key-data`, `token`, and the file-path forms, relative to the file), so the same
tools read it.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .transport import ClientCredentials

KUBECONFIG_ENV = "KYBERNETES_CONFIG"
DEFAULT_KUBECONFIG = Path.home() / ".kybernetes" / "config"


class KubeconfigError(ValueError):
    """A kubeconfig that cannot be used: which file, which field, why."""


@dataclass(frozen=True)
class ClusterAccess:
    """Where the API server is and how to reach it: target HOST:PORT and credentials."""

    server: str
    credentials: ClientCredentials | None
    namespace: str = ""
    user: str = ""


def grpc_target(server: str) -> str:
    """HOST:PORT from a kubeconfig server URL (`https://127.0.0.1:6443`) or a bare target."""
    for scheme in ("https://", "http://"):
        if server.startswith(scheme):
            server = server[len(scheme) :]
    return server.rstrip("/")


def resolve_path(explicit: str | None = None) -> Path | None:
    """--kubeconfig, else $KYBERNETES_CONFIG, else ~/.kybernetes/config if it exists."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(KUBECONFIG_ENV)
    if from_env:
        return Path(from_env)
    return DEFAULT_KUBECONFIG if DEFAULT_KUBECONFIG.exists() else None


def _named(document: dict[str, Any], section: str, name: str, path: Path) -> dict[str, Any]:
    for entry in document.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            body = entry.get(section[:-1])
            if not isinstance(body, dict):
                raise KubeconfigError(f"{path}: {section}[{name}]: missing its {section[:-1]} map")
            return body
    raise KubeconfigError(f'{path}: {section}: no entry named "{name}"')


def _material(body: dict[str, Any], field: str, base: Path, path: Path, where: str) -> bytes | None:
    """`<field>-data` (base64) or `<field>` (a file, relative to the kubeconfig)."""
    data = body.get(f"{field}-data")
    if data:
        try:
            return base64.b64decode(str(data), validate=True)
        except (binascii.Error, ValueError):
            raise KubeconfigError(f"{path}: {where}.{field}-data: not valid base64") from None
    file = body.get(field)
    if file:
        target = Path(str(file))
        target = target if target.is_absolute() else base / target
        try:
            return target.read_bytes()
        except OSError as error:
            raise KubeconfigError(f"{path}: {where}.{field}: {error.strerror}: {target}") from None
    return None


def load(path: Path, *, context: str | None = None) -> ClusterAccess:
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise KubeconfigError(f"{path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise KubeconfigError(f"{path}: not YAML: {str(error)[:200]}") from None
    if not isinstance(document, dict):
        raise KubeconfigError(f"{path}: not a kubeconfig (expected a map)")
    context_name = context or document.get("current-context")
    if not context_name:
        raise KubeconfigError(f"{path}: current-context: not set (or pass --context)")
    chosen = _named(document, "contexts", str(context_name), path)
    cluster = _named(document, "clusters", str(chosen.get("cluster", "")), path)
    user_name = str(chosen.get("user", ""))
    user = _named(document, "users", user_name, path) if user_name else {}
    base = path.parent
    server = cluster.get("server")
    if not server:
        raise KubeconfigError(f"{path}: clusters[{chosen.get('cluster')}].server: required")
    ca = _material(cluster, "certificate-authority", base, path, f"clusters[{chosen.get('cluster')}]")
    certificate = _material(user, "client-certificate", base, path, f"users[{user_name}]")
    key = _material(user, "client-key", base, path, f"users[{user_name}]")
    token = user.get("token")
    if token is None and user.get("tokenFile"):
        try:
            token = (base / str(user["tokenFile"])).read_text().strip()
        except OSError as error:
            raise KubeconfigError(f"{path}: users[{user_name}].tokenFile: {error.strerror}") from None
    if (certificate is None) != (key is None):
        raise KubeconfigError(f"{path}: users[{user_name}]: client-certificate and client-key go together")
    credentials = None
    if ca is not None:
        credentials = ClientCredentials(ca, certificate, key, str(token) if token else None)
    elif certificate or token:
        raise KubeconfigError(
            f"{path}: clusters[{chosen.get('cluster')}].certificate-authority: required to send credentials"
        )
    return ClusterAccess(grpc_target(str(server)), credentials, str(chosen.get("namespace", "") or ""), user_name)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def render(
    *,
    cluster: str,
    server: str,
    ca_certificate: bytes,
    user: str,
    certificate: bytes | None = None,
    key: bytes | None = None,
    token: str | None = None,
    namespace: str = "",
) -> str:
    """A self-contained kubeconfig (certificates embedded, as kubeadm writes admin.conf)."""
    credentials: dict[str, str] = {}
    if certificate is not None and key is not None:
        credentials["client-certificate-data"] = _b64(certificate)
        credentials["client-key-data"] = _b64(key)
    if token:
        credentials["token"] = token
    context: dict[str, str] = {"cluster": cluster, "user": user}
    if namespace:
        context["namespace"] = namespace
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster,
                "cluster": {
                    "server": server if "://" in server else f"https://{server}",
                    "certificate-authority-data": _b64(ca_certificate),
                },
            }
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": f"{user}@{cluster}", "context": context}],
        "current-context": f"{user}@{cluster}",
        "preferences": {},
    }
    return yaml.safe_dump(document, sort_keys=False)


def write(path: Path, text: str) -> None:
    """Writes a kubeconfig readable by its owner only (it holds a private key or token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


def add_kubeconfig_flag(parser: Any) -> None:
    parser.add_argument(
        "--kubeconfig",
        default=None,
        metavar="FILE",
        help=f"kubeconfig with the API server, its CA and this client's credentials "
        f"(default ${KUBECONFIG_ENV}, else {DEFAULT_KUBECONFIG})",
    )

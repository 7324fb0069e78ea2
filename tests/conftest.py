"""Fixtures shared by every test tier: real etcd, a real API server, Docker.

Each test run starts its own etcd on a free loopback port with a temporary
data dir, so tests can run beside a `make up` cluster. Tier-specific fixtures
are in tests/integration/conftest.py and tests/e2e/conftest.py; process
helpers (free_port, ManagedProcess...) come from tools.processes, waiting
from tests.polling.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from typing import Iterator

import pytest

from services.common.client import ApiClient
from services.common.kubeconfig import KUBECONFIG_ENV
from tests import shared_bridge
from tools.clusterpki import ClusterPKI
from tools.processes import DEV_PKI_ENV, ApiServerProcess, EtcdProcess, dev_pki

BUSYBOX_IMAGE = os.environ.get("KYBERNETES_BUSYBOX_IMAGE", "kybernetes/busybox:latest")
PAUSE_IMAGE = os.environ.get("KYBERNETES_PAUSE_IMAGE", "kybernetes/pause:latest")


class EtcdServer(EtcdProcess):
    """A throwaway etcd on loopback, in a temporary directory."""

    def __init__(self) -> None:
        super().__init__(tempfile.mkdtemp(prefix="kyb-etcd-"))

    def stop(self, timeout: float = 10.0) -> int | None:
        code = super().stop(timeout)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        return code


def pytest_configure(config: pytest.Config) -> None:
    """Every process a test starts runs with TLS and authentication, from a CA made for
    this session: the API server and etcd take dev_pki()'s flags, and every client
    (ApiClient, kubecfg, components) reads the admin kubeconfig through $KYBERNETES_CONFIG
    unless a test gives it another identity."""
    root = tempfile.mkdtemp(prefix="kyb-pki-")
    os.environ[DEV_PKI_ENV] = root
    os.environ[KUBECONFIG_ENV] = str(dev_pki().root / "admin.conf")


def pytest_unconfigure(config: pytest.Config) -> None:
    root = os.environ.get(DEV_PKI_ENV, "")
    if root and os.path.basename(root).startswith("kyb-pki-"):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster_pki() -> ClusterPKI:
    """The session's CA and certificates (tools/clusterpki.py), to make identities from."""
    return dev_pki()


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdServer]:
    server = EtcdServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def etcd_endpoint(etcd: EtcdServer) -> str:
    return etcd.endpoint


@pytest.fixture(scope="session")
def apiserver(etcd_endpoint: str) -> Iterator[ApiServerProcess]:
    """One API server (scheduler and controllers off) for the session; tests
    isolate themselves with their own namespaces and node names."""
    server = ApiServerProcess(etcd_endpoint, "--controllers=")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shared_pod_bridge() -> Iterator[None]:
    """The kubelets' default bridge (kyb0) as it was before the session, afterwards: what the
    session's kubelets made of it is removed and checked gone (tests/shared_bridge.py). Used
    (autouse) by the tiers that start kubelets."""
    before = shared_bridge.snapshot()
    yield
    left = shared_bridge.restore(before)
    assert left == [], f"left behind on the kubelets' bridge: {left}"


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def unique_name() -> str:
    return f"n-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def api_address(apiserver: ApiServerProcess) -> str:
    """The API server the `api` client talks to; a module with its own control
    plane overrides this."""
    return apiserver.address


@pytest.fixture
async def api(api_address: str):
    """An API client for one test."""
    client = ApiClient(api_address)
    yield client
    await client.close()

"""Fixtures shared by every test tier: real etcd, a real API server, Docker.

Each test run starts its own etcd on a free loopback port with a temporary
data dir, so tests can run beside a `make up` cluster.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
BUSYBOX_IMAGE = os.environ.get("KYBERNETES_BUSYBOX_IMAGE", "kybernetes/busybox:latest")
PAUSE_IMAGE = os.environ.get("KYBERNETES_PAUSE_IMAGE", "kybernetes/pause:latest")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class EtcdServer:
    """A throwaway etcd on loopback."""

    def __init__(self) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="kyb-etcd-")
        self.port = free_port()
        peer_port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.log = open(os.path.join(self.data_dir, "etcd.log"), "wb")
        self.process = subprocess.Popen(
            [
                shutil.which("etcd") or "/usr/bin/etcd",
                "--data-dir", os.path.join(self.data_dir, "data"),
                "--listen-client-urls", f"http://{self.endpoint}",
                "--advertise-client-urls", f"http://{self.endpoint}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
                "--log-level", "error",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class ApiServerProcess:
    """`kube-apiserver` as its own process, as users run it."""

    def __init__(self, etcd_endpoint: str, *extra_args: str) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = tempfile.mktemp(prefix="kyb-apiserver-", suffix=".log")
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "services.apiserver.main",
                "--listen", self.address,
                "--etcd-servers", etcd_endpoint,
                *extra_args,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        try:
            wait_for_port(self.port, self.process)
        except Exception:
            self.stop()
            print(Path(self.log_path).read_text()[-4000:], file=sys.stderr)
            raise

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode

    def log_text(self) -> str:
        return Path(self.log_path).read_text(errors="replace")


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


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def unique_name() -> str:
    return f"n-{uuid.uuid4().hex[:10]}"

"""A whole local cluster for end-to-end tests, started as `make up` starts one.

The cluster uses its own ports, loopback network and node names, so it can run
beside a `make up` cluster.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import docker

from services.common.localcluster import NODE_LABEL
from services.common.processes import REPO, free_port

KUBECFG = str(Path(sys.executable).parent / "kubecfg")
GRPCURL = str(Path(sys.executable).parent / "grpcurl")
EXAMPLES = REPO / "examples"


class LocalCluster:
    def __init__(self, tmp_path: Path, nodes: int, mode: str = "processes") -> None:
        self.state = tmp_path / "cluster"
        self.api_port = free_port()
        self.network = f"127.0.{random.randint(10, 250)}"
        self.prefix = f"e2e{uuid.uuid4().hex[:6]}-"
        self.mode = mode
        self.nodes = [f"{self.prefix}node-{i}" for i in range(1, nodes + 1)]
        self.up_args = [
            "--state-dir", str(self.state), "--nodes", str(nodes), "--mode", mode,
            "--etcd-port", str(free_port()), "--api-port", str(self.api_port),
            "--node-network", self.network, "--node-prefix", self.prefix,
            "--container-prefix", self.prefix,
        ]

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.api_port}"

    def node_ip(self, index: int) -> str:
        return f"{self.network}.{index + 1}"

    def localcluster(self, command: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "services.common.localcluster", command, *args],
            capture_output=True, text=True, timeout=300, cwd=REPO,
        )

    def up(self) -> subprocess.CompletedProcess:
        return self.localcluster("up", *self.up_args)

    def down(self) -> subprocess.CompletedProcess:
        return self.localcluster("down", "--state-dir", str(self.state))

    def kubecfg(self, *args: str, check: bool = True) -> str:
        done = subprocess.run([KUBECFG, "--server", self.server, *args], capture_output=True, text=True, timeout=60)
        if check:
            assert done.returncode == 0, f"kubecfg {' '.join(args)}: {done.stderr}"
        return done.stdout

    def pods(self, selector: str) -> list[dict]:
        return json.loads(self.kubecfg("get", "pods", "-l", selector, "-o", "json"))["items"]

    def recorded_pids(self) -> list[int]:
        data = json.loads((self.state / "cluster.json").read_text())
        return [c["pid"] for c in data["components"].values() if c.get("pid")]

    def remove_leftovers(self) -> None:
        client = docker.from_env()
        for node in self.nodes:
            for container in client.containers.list(all=True, filters={"label": f"{NODE_LABEL}={node}"}):
                container.remove(force=True)
        for container in client.containers.list(all=True, filters={"name": self.prefix}):
            container.remove(force=True)


def wait_for(condition, timeout: float = 90.0, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except (AssertionError, OSError, ValueError, KeyError, IndexError) as error:
            last = error
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached in {timeout}s (last: {last!r})")


def running_and_ready(pods: list[dict]) -> bool:
    return all(
        p.get("status", {}).get("phase") == "Running"
        and all(c.get("ready") for c in p["status"].get("containerStatuses", []))
        for p in pods
    )


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode().strip()


@contextlib.contextmanager
def running_cluster(tmp_path: Path, nodes: int, mode: str = "processes") -> Iterator[LocalCluster]:
    """A cluster that is up for the block and gone, with every container, after it."""
    cluster = LocalCluster(tmp_path, nodes=nodes, mode=mode)
    try:
        started = cluster.up()
        assert started.returncode == 0, started.stdout + started.stderr
        yield cluster
    finally:
        cluster.down()
        cluster.remove_leftovers()

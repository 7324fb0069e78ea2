"""A whole local cluster for end-to-end tests, started as `make up` starts one.

The cluster uses its own ports, loopback network and node names, so it can run
beside a `make up` cluster. The `local_cluster` fixture (conftest.py) starts
them and takes them down after the test.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import docker

from tools.localcluster import NODE_LABEL
from tools.processes import REPO, free_port

# How e2e tests wait (`eventually_blocking(check, what=..., **CLUSTER_WAIT)`): a whole
# cluster converges in tens of seconds, each check runs kubecfg or an HTTP request, and
# while it converges a check may meet a refused connection (OSError), an empty reply
# (ValueError from json) or an object without the field yet (KeyError, IndexError).
CLUSTER_WAIT: dict[str, Any] = {
    "timeout": 90.0,
    "interval": 0.5,
    "retry_on": (OSError, ValueError, KeyError, IndexError),
}

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
        # A service range of its own, outside make up's 10.96.0.0/12: every proxy
        # on this kernel rejects what its own range holds and no service matches.
        self.service_cidr = f"10.{random.randint(112, 127)}.{random.randint(0, 255)}.0/24"
        self.up_args = [
            "--state-dir", str(self.state), "--nodes", str(nodes), "--mode", mode,
            "--etcd-port", str(free_port(2)), "--api-port", str(self.api_port),
            "--node-network", self.network, "--node-prefix", self.prefix,
            "--container-prefix", self.prefix, "--service-cidr", self.service_cidr,
            "--dns-port", str(free_port()),
            # Names outside the cluster go nowhere: nothing listens there, so a test
            # never sends a query off this machine.
            "--dns-upstream", f"127.0.0.1:{free_port()}",
        ]

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.api_port}"

    def node_ip(self, index: int) -> str:
        return f"{self.network}.{index + 1}"

    def localcluster(self, command: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tools.localcluster", command, *args],
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


def running_and_ready(pods: list[dict]) -> bool:
    return all(
        p.get("status", {}).get("phase") == "Running"
        and all(c.get("ready") for c in p["status"].get("containerStatuses", []))
        for p in pods
    )


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode().strip()



"""The API as a Node.js user sees it: a client generated at test time from protos/ (issue 15).

tests/node/client.mjs loads protos/kybernetes/v1/*.proto with @grpc/proto-loader
(no stubs of ours) and runs Create/Get/List (selectors, pagination)/Update/
Delete/Watch and a Service round trip against the real API server and etcd,
checking that every field it sent comes back, also in each List item and Watch
event. It guards the List encoding that repeated an item's `metadata` field,
which protobuf.js decoded as an empty ObjectMeta.

Its modules (pinned in tests/node/package-lock.json) are installed with
`npm ci` when tests/node/node_modules is missing or does not match the lock.
`make deps` installs node and npm.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tools.processes import REPO

NODE_DIR = REPO / "tests" / "node"
CLIENT = NODE_DIR / "client.mjs"
NPM_CI = ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"]  # pure JavaScript: nothing to build


def _locked_packages(path: Path) -> dict | None:
    try:
        packages = json.loads(path.read_text())["packages"]
    except (OSError, ValueError, KeyError):
        return None
    packages.pop("", None)  # the project itself: only in package-lock.json
    return packages


def _modules_current() -> bool:
    """node_modules holds exactly what package-lock.json pins (npm's own record of
    what it installed, node_modules/.package-lock.json, matches the lock)."""
    installed = _locked_packages(NODE_DIR / "node_modules" / ".package-lock.json")
    return installed is not None and installed == _locked_packages(NODE_DIR / "package-lock.json")


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(
            f"`{tool}` is not installed: the Node.js client test needs node and npm "
            "(`make deps` installs the Debian packages nodejs and npm)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def node() -> str:
    node = _require("node")
    if not _modules_current():
        _require("npm")
        outputs = []
        for _ in range(2):  # one retry: a registry hiccup is not a test failure
            result = subprocess.run(NPM_CI, cwd=NODE_DIR, capture_output=True, text=True, timeout=300)
            if result.returncode == 0 and _modules_current():
                break
            outputs.append(f"$ {' '.join(NPM_CI)} -> {result.returncode}\n{result.stdout}{result.stderr}")
        else:
            pytest.fail("could not install tests/node's modules:\n" + "\n".join(outputs), pytrace=False)
    return node


def test_node_client_round_trips_every_field(node, apiserver, cluster_pki):
    pki = cluster_pki
    try:
        result = subprocess.run(
            [node, str(CLIENT), apiserver.address, str(pki.ca_file), *map(str, pki.pair("admin"))],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"the Node.js client did not finish in {error.timeout} s:\n{error.stdout}{error.stderr}")
    assert result.returncode == 0, (
        f"the Node.js client failed (exit {result.returncode}):\n{result.stdout}{result.stderr}\n"
        f"API server log:\n{apiserver.log_tail()}"
    )
    assert result.stdout.startswith("OK "), result.stdout + result.stderr

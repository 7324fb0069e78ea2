"""kube-proxy's nftables mode on the real kernel: cluster IPs and node ports to "pods".

The behaviour every mode shares (and the test network, the harness and the
safety net) is in proxy_behaviour.py, imported here with `mode` = nftables;
below is what is this mode's own: its command-line edges.
"""

from __future__ import annotations

import subprocess
import uuid

import pytest

from services.proxy import nftables
from tools.processes import REPO, python_module_argv

# Detailed assertion messages from the shared module too (before it is first imported).
pytest.register_assert_rewrite("tests.integration.proxy_behaviour")

from .proxy_behaviour import *  # noqa: E402, F403 (the shared fixtures and tests: collected here)
from .proxy_behaviour import nft_tables  # noqa: E402


@pytest.fixture(scope="module")
def mode() -> str:
    return "nftables"


def test_cleanup_without_a_table_succeeds():
    node = f"kybtest-{uuid.uuid4().hex[:6]}-none"
    result = subprocess.run(
        python_module_argv("services.proxy.main", "--cleanup", "--node-name", node),
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"table ip {nftables.table_name(node)}" not in nft_tables()


def test_bad_service_range_is_refused_with_its_name():
    result = subprocess.run(
        python_module_argv("services.proxy.main", "--service-cluster-ip-range", "10.96.0.1/12"),
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert result.returncode == 2 and "--service-cluster-ip-range" in result.stderr

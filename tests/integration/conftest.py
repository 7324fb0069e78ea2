"""Fixtures for the integration tests (real etcd, real Docker), on top of tests/conftest.py
(etcd, apiserver, api, namespace).

A module that runs its own control plane overrides `api_address` with its own `plane`.
"""

from __future__ import annotations

import os
import sys
from typing import Iterator

import pytest

from tests.integration.kubelet_helpers import KubeletProcess, remove_node_containers, unique_node


@pytest.fixture(autouse=True)
def _shared_pod_bridge(shared_pod_bridge: None) -> None:
    """Every test here may start kubelets on the default bridge: it is put back as it was after the session."""


@pytest.fixture
def node_name() -> Iterator[str]:
    """A node name no other test uses; its containers are removed afterwards, pass or fail."""
    node = unique_node()
    yield node
    remove_node_containers(node)


@pytest.fixture
def kubelet(node_name: str) -> Iterator[KubeletProcess]:
    """A kubelet with no API server (static pods only); KYB_SHOW_KUBELET_LOG=1 prints its log afterwards."""
    process = KubeletProcess(node_name)
    yield process
    failed_log = process.log_text()
    process.cleanup()
    if os.environ.get("KYB_SHOW_KUBELET_LOG"):
        print(failed_log[-8000:], file=sys.stderr)

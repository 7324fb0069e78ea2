"""A component's start is mostly Python importing (issue 17: each back within 2 s of a kill -9):
what a component's main imports at start stays out of what it does not need there."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tools.processes import REPO, etcd_argv

# Packages a component's main must not import at start, each with the components that need it.
HEAVY = {
    "rich": set(),  # structlog's console renderer and traceback prettifier look for it; we render logfmt/JSON
    "better_exceptions": set(),
    "aiohttp": set(),  # the REST API: imported by the API server only when --rest-listen is given
    "jsonpatch": set(),  # REST PATCH only
    "kubernetes": set(),  # the official client: a test tool, never a component's
    "docker": {"kubelet"},
    "requests": {"kubelet"},  # under the docker SDK
}
COMPONENTS = ["apiserver", "kubelet", "replicator", "proxy", "dns"]


def imported_at_start(component: str) -> dict:
    """The heavy packages in sys.modules once the component's main is imported, and whether
    rich can still be imported afterwards (hidden from structlog only while it imports)."""
    script = (
        "import importlib, importlib.util, json, sys\n"
        f"importlib.import_module('services.{component}.main')\n"
        f"loaded = [name for name in {sorted(HEAVY)!r} if name in sys.modules]\n"
        "rich_installed = importlib.util.find_spec('rich') is not None\n"
        "if rich_installed:\n"
        "    import rich.pretty  # noqa: F401\n"
        "print(json.dumps({'loaded': loaded, 'rich_installed': rich_installed}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("component", COMPONENTS)
def test_main_imports_nothing_it_does_not_need_at_start(component: str) -> None:
    result = imported_at_start(component)
    unexpected = [name for name in result["loaded"] if component not in HEAVY[name]]
    assert unexpected == [], f"services.{component}.main imports {unexpected} at start"
    if component == "kubelet":  # the check sees the modules it looks for
        assert "docker" in result["loaded"]


def test_rich_is_installed_so_the_check_means_something() -> None:
    # import-linter brings rich into the dev environment: were it gone, the check above could
    # not see structlog import it.
    assert imported_at_start("replicator")["rich_installed"]


def test_a_lone_etcd_member_elects_itself_at_once_and_a_cluster_keeps_etcds_timing() -> None:
    alone = etcd_argv("/tmp/data", 2379, 2380)
    assert alone[alone.index("--election-timeout") + 1] == "100"
    assert alone[alone.index("--heartbeat-interval") + 1] == "10"
    members = etcd_argv("/tmp/data", 2379, 2380, name="etcd-0", peers={"etcd-0": 2380, "etcd-1": 2382, "etcd-2": 2384})
    assert "--election-timeout" not in members and "--heartbeat-interval" not in members

"""A real supervisord (tools/supervisor.py) under the two new uses: a rolling upgrade, where a
program whose code changed keeps running on its old program until it is replaced, one at a
time; and a machine's own supervisord as scripts/join-node.sh runs it (`python -m
tools.supervisor run/state/shutdown`), which restarts what dies and leaves nothing when stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.polling import eventually_blocking
from tools.localcluster import pid_alive
from tools.supervisor import (
    LISTENER, REPO, UNIX_PATH_MAX, Program, Supervisor, process_digest, run_program, shutdown_all,
)

WAIT = {"timeout": 30.0, "interval": 0.05}
SLEEP = "/bin/sleep"


@pytest.fixture
def supervisor(tmp_path):
    supervisor = Supervisor(tmp_path / "state")
    yield supervisor
    shutdown_all(supervisor.layout.state)
    assert not supervisor.running() and supervisor.orphans() == []


def sleeper(state: Path, name: str, digest: str = "", seconds: str = "1000") -> Program:
    return Program(name, (SLEEP, seconds), state / "logs" / f"{name}.log", digest)


def running_pid(supervisor: Supervisor, name: str) -> int:
    """Its process (from STARTING on: supervisord counts it RUNNING only after 3 s)."""
    info = eventually_blocking(
        lambda: (found := supervisor.process(name)) and found.state in ("STARTING", "RUNNING") and found.pid and found,
        what=f"{name} running", **WAIT,
    )
    return info.pid


def test_a_changed_program_runs_on_until_it_is_replaced(supervisor):
    state = supervisor.layout.state
    supervisor.write_config([sleeper(state, "a", "0001"), sleeper(state, "b", "0001")], python=sys.executable,
                            directory=REPO)
    supervisor.start_daemon(sys.executable)
    for name in ("a", "b"):
        supervisor.start(name)
    pids = {name: running_pid(supervisor, name) for name in ("a", "b")}
    # Once its process has exec'd the program (supervisord forks, then execs).
    eventually_blocking(lambda: supervisor.started_digest("a") == "0001" == process_digest(pids["a"]),
                        what="a on digest 0001", **WAIT)

    # New code for both, a new program, one gone; `a` and `b` are kept running (the caller rolls them).
    supervisor.write_config([sleeper(state, "a", "0002"), sleeper(state, "b", "0002"), sleeper(state, "c")],
                            python=sys.executable, directory=REPO)
    replaced, kept = supervisor.update(keep=["a", "b"])
    assert (replaced, kept) == ([], ["a", "b"])
    assert supervisor.pids() == {**pids, LISTENER: supervisor.pids()[LISTENER]}
    assert supervisor.process("c").state == "STOPPED"  # added, started by whoever asks
    supervisor.replace("a")
    assert supervisor.process("a").state == "STOPPED" and supervisor.pids()["b"] == pids["b"]
    supervisor.start("a")
    assert running_pid(supervisor, "a") != pids["a"]
    eventually_blocking(lambda: supervisor.started_digest("a") == "0002", what="a on digest 0002", **WAIT)
    assert supervisor.started_digest("b") == "0001"
    # Reading the configuration again finds `b` still to be replaced, and nothing else.
    assert supervisor.update(keep=["a", "b"]) == ([], ["b"])
    # One that changed and does not run is replaced at once (nothing to roll).
    supervisor.stop("b")
    eventually_blocking(lambda: supervisor.process("b").state == "STOPPED", what="b stopped", **WAIT)
    supervisor.write_config([sleeper(state, "a", "0002"), sleeper(state, "b", "0003")], python=sys.executable,
                            directory=REPO)
    assert supervisor.update(keep=["a", "b"]) == (["b", "c"], [])
    assert supervisor.process("c") is None


def test_a_machines_supervisord_runs_restarts_and_stops_its_programs(supervisor, tmp_path):
    state = supervisor.layout.state
    log = tmp_path / "kubelet.log"
    assert run_program(state, Program("kubelet", (SLEEP, "1000"), log)) == "started"
    first = running_pid(supervisor, "kubelet")
    assert run_program(state, Program("proxy", (SLEEP, "999"), tmp_path / "proxy.log")) == "started"
    assert run_program(state, Program("kubelet", (SLEEP, "1000"), log)) == "already running"
    assert supervisor.pids()["kubelet"] == first
    # Killed: supervisord brings it back.
    os.kill(first, signal.SIGKILL)
    second = eventually_blocking(lambda: (pid := supervisor.pids().get("kubelet")) and pid != first and pid,
                                 what="the kubelet restarted", **WAIT)
    # Other flags: restarted on them; the proxy is left alone.
    proxy = running_pid(supervisor, "proxy")
    assert run_program(state, Program("kubelet", (SLEEP, "1001"), log)).startswith("restarted")
    assert running_pid(supervisor, "kubelet") not in (first, second)
    assert supervisor.pids()["proxy"] == proxy

    # The script's view, through the module's command line: state, and a shutdown that leaves nothing.
    command = [sys.executable, "-m", "tools.supervisor"]
    shown = subprocess.run([*command, "state", str(state), "proxy"], capture_output=True, text=True, cwd=REPO,
                           timeout=30)
    assert shown.stdout.strip() in ("STARTING", "RUNNING")
    daemon = supervisor.pid()
    pids = list(supervisor.pids().values())
    stopped = subprocess.run([*command, "shutdown", str(state)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
    assert not supervisor.running() and supervisor.orphans() == []
    assert [pid for pid in [daemon, *pids] if pid_alive(pid)] == []  # a zombie is not alive
    shown = subprocess.run([*command, "state", str(state), "proxy"], capture_output=True, text=True, cwd=REPO,
                           timeout=30)
    assert shown.stdout.strip() == "UNKNOWN"


@pytest.mark.parametrize("socket_length", [UNIX_PATH_MAX, UNIX_PATH_MAX + 1, 107])
def test_supervisord_starts_whatever_the_state_directorys_depth(tmp_path, socket_length):
    """The socket path supervisord binds (first as "<path>.<pid>") fits a unix socket's 108 bytes
    at the deepest state directory that keeps it there, and one deeper moves it to /tmp."""
    base = str(tmp_path / "s")
    state = Path(base + "d" * (socket_length - len(base) - len("/supervisor.sock")))
    supervisor = Supervisor(state)
    try:
        supervisor.write_config([sleeper(state, "a")], python=sys.executable, directory=REPO)
        supervisor.start_daemon(sys.executable)
        supervisor.start("a")
        running_pid(supervisor, "a")
        assert (supervisor.layout.socket.parent == state) == (socket_length <= UNIX_PATH_MAX)
    finally:
        shutdown_all(state)
    assert not supervisor.running() and supervisor.orphans() == []

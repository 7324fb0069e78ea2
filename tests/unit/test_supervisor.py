"""Process mode's supervisord (tools/supervisor.py): the configuration `make up` writes, read
back by supervisor's own parser; the event listener's protocol; restart counting; `make
status`'s table."""

from __future__ import annotations

import io
import json
import shlex
from pathlib import Path

import pytest
from supervisor.datatypes import RestartUnconditionally
from supervisor.options import ServerOptions

from tools.supervisor import (
    LISTENER,
    STOP_WAIT_SECONDS,
    UNIX_PATH_MAX,
    Layout,
    ProcessInfo,
    Program,
    StatusRow,
    event_record,
    format_status,
    format_uptime,
    listen,
    parse_restarts_column,
    render_config,
    restart_counts,
    supervised_by,
)

PYTHON = "/opt/venv/bin/python"


def programs(state: Path) -> list[Program]:
    return [
        Program("etcd", ("/usr/bin/etcd", "--name", "default", "--data-dir", str(state / "etcd")),
                state / "logs" / "etcd.log"),
        Program("apiserver", (PYTHON, "-m", "services.apiserver.main", "--listen", "127.0.0.1:6443,10.240.0.1:6443"),
                state / "logs" / "apiserver.log"),
        Program("kubelet-node-2", ("nsenter", "--net=/run/netns/kyb0-node-2", "--", PYTHON, "-m",
                                   "services.kubelet.main", "--node-name", "node 2", "--format", "100%"),
                state / "logs" / "kubelet-node-2.log"),
    ]


def parsed(state: Path, programs: list[Program]) -> ServerOptions:
    """The configuration as supervisord itself reads it."""
    layout = Layout(state)
    layout.directory.mkdir(parents=True)
    layout.log.parent.mkdir()
    layout.config.write_text(render_config(layout, programs, python=PYTHON, directory=state))
    options = ServerOptions()
    options.realize(args=["-c", str(layout.config)])
    return options


def test_each_component_is_a_program_supervisord_restarts_and_stops_in_order(tmp_path):
    options = parsed(tmp_path, programs(tmp_path))
    groups = {group.name: group for group in options.process_group_configs}
    assert list(groups) == [LISTENER, "etcd", "apiserver", "kubelet-node-2"]  # sorted by priority
    for program in programs(tmp_path):
        group = groups[program.name]
        [config] = group.process_configs
        # The argv survives supervisord's %-expansion and shlex parsing, spaces and percent signs included.
        assert shlex.split(config.command) == list(program.argv)
        assert config.stdout_logfile == str(program.log) and config.redirect_stderr
        assert config.autorestart is RestartUnconditionally
        assert not config.autostart  # `make up` starts them in order, each once the one before is healthy
        assert config.stopsignal.name == "SIGTERM" and config.stopwaitsecs == STOP_WAIT_SECONDS
        assert config.killasgroup
        assert config.startsecs <= 3 and config.startretries > 3
        assert config.directory == str(tmp_path)
    # Started in the components' order, stopped in reverse (supervisord stops the highest priority first).
    assert groups["etcd"].priority < groups["apiserver"].priority < groups["kubelet-node-2"].priority
    assert groups[LISTENER].priority < groups["etcd"].priority


def test_supervisord_answers_on_a_unix_socket_under_the_state_dir_only(tmp_path):
    options = parsed(tmp_path, programs(tmp_path))
    [server] = options.server_configs
    assert server["family"].name == "AF_UNIX"
    assert server["file"] == str(tmp_path / "supervisor.sock")
    assert server["chmod"] == 0o700
    assert options.pidfile == str(tmp_path / "supervisor" / "supervisord.pid")
    assert options.logfile == str(tmp_path / "logs" / "supervisord.log")


def test_the_listener_gets_every_process_state_event(tmp_path):
    options = parsed(tmp_path, [])
    [group] = options.process_group_configs
    assert group.name == LISTENER
    assert [event.__name__ for event in group.pool_events] == ["ProcessStateEvent"]
    assert group.buffer_size >= 100
    assert shlex.split(group.process_configs[0].command)[-2:] == ["listen", str(Layout(tmp_path).events)]


@pytest.mark.parametrize("argument", ["a ;b", "a #b", "line\nbreak"])
def test_an_argument_supervisord_would_cut_is_refused(tmp_path, argument):
    with pytest.raises(ValueError, match="etcd"):
        render_config(Layout(tmp_path), [Program("etcd", ("/usr/bin/etcd", argument), tmp_path / "etcd.log")],
                      python=PYTHON, directory=tmp_path)


@pytest.mark.parametrize("name", ["", "a:b", "a b"])
def test_a_name_supervisord_cannot_take_is_refused(tmp_path, name):
    with pytest.raises(ValueError, match="program name"):
        render_config(Layout(tmp_path), [Program(name, ("/bin/true",), tmp_path / "x.log")], python=PYTHON,
                      directory=tmp_path)


def test_a_state_dir_too_deep_for_a_unix_socket_gets_one_named_after_it():
    deep = Path("/tmp") / ("d" * 120)
    socket = Layout(deep).socket
    assert len(str(socket)) <= UNIX_PATH_MAX
    assert socket == Layout(deep).socket != Layout(deep / "other").socket
    assert Layout(Path("/srv/k")).socket == Path("/srv/k/supervisor.sock")


def event(name: str, process: str, source: str) -> str:
    return json.dumps({"event": f"PROCESS_STATE_{name}", "process": process, "from": source})


def test_a_restart_is_a_start_after_an_exit_or_a_back_off_not_one_asked_for():
    lines = [
        event("STARTING", "etcd", "STOPPED"),  # make up started it
        event("RUNNING", "etcd", "STARTING"),
        event("EXITED", "etcd", "RUNNING"),
        event("STARTING", "etcd", "EXITED"),  # killed: restarted
        event("BACKOFF", "etcd", "STARTING"),
        event("STARTING", "etcd", "BACKOFF"),  # failed to start: retried
        event("FATAL", "etcd", "BACKOFF"),
        event("STARTING", "etcd", "FATAL"),  # make up again
        event("STARTING", "dns", "EXITED"),
        '{"event": "PROCESS_STATE_STARTING", "process": "dns", "fr',  # cut short by a crash
        "",
    ]
    assert restart_counts(lines) == {"etcd": 2, "dns": 1}


def test_an_event_becomes_one_json_line():
    headers = {"ver": "3.0", "eventname": "PROCESS_STATE_EXITED", "len": "64"}
    record = event_record(headers, "processname:dns groupname:dns from_state:RUNNING expected:0 pid:4242", 12.34567)
    assert record == {"at": 12.346, "event": "PROCESS_STATE_EXITED", "process": "dns", "from": "RUNNING",
                      "pid": 4242, "expected": 0}


def test_the_listener_speaks_supervisords_protocol(tmp_path):
    payloads = ["processname:etcd groupname:etcd from_state:EXITED tries:0", "when:1 serial:3"]
    names = ["PROCESS_STATE_STARTING", "TICK_5"]
    stdin = io.StringIO("".join(
        f"ver:3.0 server:supervisor serial:{i} pool:{LISTENER} poolserial:{i} eventname:{name} len:{len(payload)}\n"
        + payload for i, (name, payload) in enumerate(zip(names, payloads, strict=True))
    ))
    stdout = io.StringIO()
    events = tmp_path / "supervisor" / "events.jsonl"
    listen(events, stdin, stdout)
    # READY before each event, OK after each, READY again until its input ends.
    assert stdout.getvalue() == "READY\nRESULT 2\nOKREADY\nRESULT 2\nOKREADY\n"
    [line] = events.read_text().splitlines()  # only process state events are kept
    assert restart_counts([line]) == {"etcd": 1}


def test_uptime_is_only_for_a_running_process():
    info = {"name": "etcd", "statename": "RUNNING", "pid": 7, "start": 100, "now": 3825, "description": "pid 7"}
    assert ProcessInfo.from_rpc(info) == ProcessInfo("etcd", "RUNNING", 7, 3725.0, "pid 7")
    assert ProcessInfo.from_rpc({**info, "statename": "BACKOFF", "pid": 0}).uptime == 0.0
    assert format_uptime(3725) == "1:02:05"
    assert format_uptime(2 * 86400 + 5) == "2d0:00:05"


def test_status_shows_state_pid_uptime_restarts_and_health():
    lines = format_status([
        StatusRow("etcd", "RUNNING", 4242, 65.0, 1, True, "/s/logs/etcd.log"),
        StatusRow("kubelet-node-1", "BACKOFF", 0, 0.0, 3, False, "/s/logs/kubelet-node-1.log"),
    ])
    assert lines[0].split() == ["COMPONENT", "STATE", "PID", "UPTIME", "RESTARTS", "HEALTH", "LOG"]
    assert lines[1].split() == ["etcd", "RUNNING", "4242", "0:01:05", "1", "healthy", "/s/logs/etcd.log"]
    assert lines[2].split() == ["kubelet-node-1", "BACKOFF", "-", "-", "3", "DOWN", "/s/logs/kubelet-node-1.log"]
    assert parse_restarts_column("supervisord: pid 1\n" + "\n".join(lines)) == {"etcd": 1, "kubelet-node-1": 3}
    assert parse_restarts_column("no cluster is running") == {}


def test_orphans_are_the_processes_that_name_this_clusters_supervisord(tmp_path):
    ours, other = "unix:///s/supervisor.sock", "unix:///t/supervisor.sock"
    for pid, environ in {
        "11": f"PATH=/bin\0SUPERVISOR_SERVER_URL={ours}\0",
        "12": f"SUPERVISOR_SERVER_URL={other}\0",
        "13": f"X=SUPERVISOR_SERVER_URL={ours}\0",
        "14": f"SUPERVISOR_SERVER_URL={ours}.old\0",
    }.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "environ").write_bytes(environ.encode())
    (tmp_path / "15").mkdir()  # gone before its environ was read
    (tmp_path / "self").mkdir()
    assert supervised_by(ours, tmp_path) == [11]

"""Process mode's supervisord (tools/supervisor.py): the configuration `make up` writes, read
back by supervisor's own parser; the event listener's protocol; restart counting; `make
status`'s table."""

from __future__ import annotations

import argparse
import io
import json
import shlex
from pathlib import Path

import pytest
from supervisor.datatypes import RestartUnconditionally
from supervisor.options import ServerOptions

from services.apiserver.controllers import CONTROLLERS
from services.apiserver.controllers import parse_args as controller_manager_args
from services.apiserver.main import parse_args as apiserver_args
from tools import localcluster
from tools.localcluster import Component, rolling
from tools.supervisor import (
    DIGEST_ENV,
    LISTENER,
    STOP_WAIT_SECONDS,
    UNIX_PATH_MAX,
    Layout,
    ProcessInfo,
    Program,
    StatusRow,
    binary_fingerprint,
    code_digest,
    event_record,
    format_status,
    format_uptime,
    listen,
    module_sources,
    parse_restarts_column,
    process_digest,
    program_digest,
    render_config,
    restart_counts,
    rolling_order,
    runs,
    supervised_by,
    upgrade_plan,
    with_program,
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


# -- upgrades: what a program runs, and the order a changed cluster is restarted in -----------


def test_the_digest_is_of_the_argv_and_every_source_in_name_order():
    sources = {"services/replicator/main.py": "aa", "services/common/x.py": "bb"}
    argv = (PYTHON, "-m", "services.replicator.main", "--workers", "5")
    digest = code_digest(argv, sources)
    assert digest == code_digest(list(argv), dict(reversed(sources.items())))  # a function of the contents only
    assert len(digest) == 16 and digest.isalnum()
    others = {
        code_digest((*argv, "--resync-period=301"), sources),  # a flag more
        code_digest(argv, {**sources, "services/common/x.py": "bc"}),  # a file changed
        code_digest(argv, {**sources, "services/common/y.py": "cc"}),  # a file added
        code_digest(argv, {"services/replicator/main.py": "aa"}),  # a file removed
        code_digest((PYTHON, "-m", "services.replicator.main", "--workers 5"), sources),  # not the same argv
        code_digest(argv, {"services/replicator/main.py": "aa\0services/common/x.py", "": "bb"}),
    }
    assert digest not in others and len(others) == 6


@pytest.mark.parametrize(("argv", "expected"), [
    ((PYTHON, "-m", "services.kubelet.main", "--node-name", "n"), ("module", "services.kubelet.main")),
    ((PYTHON, "-u", "-m", "services.dns.main"), ("module", "services.dns.main")),
    (("nsenter", "--net=/run/netns/x", "--", PYTHON, "-m", "services.proxy.main"), ("module", "services.proxy.main")),
    (("/usr/bin/etcd", "--name", "default", "-m", "x"), ("binary", "/usr/bin/etcd")),
    ((PYTHON, "script.py", "-m", "x"), ("binary", PYTHON)),
    (("nsenter", "--net=/run/netns/x", "--", "/usr/bin/etcd"), ("binary", "/usr/bin/etcd")),
])
def test_what_a_program_runs(argv, expected):
    assert runs(argv) == expected


def test_a_component_runs_its_package_common_and_the_stubs():
    assert module_sources("services.apiserver.main") == ("services/apiserver", "services/common", "generated")
    assert module_sources("services.common.x") == ("services/common", "generated")
    assert module_sources("tools.supervisor") == ("tools", "services/common", "generated")


def fake_repo(root: Path) -> Path:
    for name in ("services/replicator/main.py", "services/kubelet/main.py", "services/common/api.py",
                 "generated/kybernetes/v1/pod_pb2.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"# {name}\n")
    (root / "services/replicator/__pycache__").mkdir()
    (root / "services/replicator/__pycache__/main.cpython-311.pyc").write_bytes(b"\0")
    return root


def test_a_changed_source_changes_the_digest_of_the_components_that_run_it_only(tmp_path):
    repo = fake_repo(tmp_path)
    replicator = (PYTHON, "-m", "services.replicator.main")
    kubelet = ("nsenter", "--net=/run/netns/n", "--", PYTHON, "-m", "services.kubelet.main")
    before = program_digest(replicator, repo), program_digest(kubelet, repo)
    assert program_digest(replicator, repo) == before[0]  # stable
    (repo / "services/replicator/__pycache__/main.cpython-311.pyc").write_bytes(b"\1")  # a cache is not code
    (repo / "services/replicator/notes.txt").write_text("x")
    assert (program_digest(replicator, repo), program_digest(kubelet, repo)) == before
    (repo / "services/replicator/main.py").write_text("# changed\n")
    assert program_digest(replicator, repo) != before[0]
    assert program_digest(kubelet, repo) == before[1]
    changed = program_digest(replicator, repo)
    (repo / "services/common/api.py").write_text("# shared, changed\n")
    assert program_digest(replicator, repo) != changed and program_digest(kubelet, repo) != before[1]
    (repo / "generated/kybernetes/v1/pod_pb2.py").unlink()
    assert len({program_digest(kubelet, repo), program_digest(kubelet, repo)}) == 1


def test_a_binary_is_its_file(tmp_path):
    binary = tmp_path / "etcd"
    binary.write_text("v3.4")
    link = tmp_path / "etcd-link"
    link.symlink_to(binary)
    first = binary_fingerprint(str(link))
    assert list(first) == [str(binary)]  # where it resolves to
    binary.write_text("v3.5.1")  # a new build: another size, another mtime
    assert binary_fingerprint(str(link)) != first
    assert binary_fingerprint(str(tmp_path / "gone")) == {str(tmp_path / "gone"): "missing"}
    assert program_digest((str(link), "--name", "x"), tmp_path) != code_digest((str(link), "--name", "x"), first)


def test_the_digest_is_the_programs_environment_so_new_code_is_a_changed_program(tmp_path):
    listed = [Program(p.name, p.argv, p.log, f"{index:016x}") for index, p in enumerate(programs(tmp_path))]
    options = parsed(tmp_path, listed)
    groups = {group.name: group.process_configs[0] for group in options.process_group_configs}
    assert groups["apiserver"].environment == {DIGEST_ENV: f"{1:016x}"}
    with pytest.raises(ValueError, match="etcd"):
        render_config(Layout(tmp_path), [Program("etcd", ("/usr/bin/etcd",), tmp_path / "e.log", 'a" b')],
                      python=PYTHON, directory=tmp_path)


def test_a_running_process_says_what_it_was_started_on(tmp_path):
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "environ").write_bytes(f"A=1\0{DIGEST_ENV}=00ff\0B=2\0".encode())
    (tmp_path / "8").mkdir()
    (tmp_path / "8" / "environ").write_bytes(f"X{DIGEST_ENV}=1\0".encode())
    assert process_digest(7, tmp_path) == "00ff"
    assert process_digest(8, tmp_path) == "" and process_digest(9, tmp_path) == ""


def test_a_rolling_upgrade_goes_by_dependency_then_as_listed():
    kinds = [("dns", "dns"), ("kubelet-a", "kubelet"), ("proxy-a", "proxy"), ("kubelet-b", "kubelet"),
             ("apiserver", "api"), ("etcd-2", "etcd"), ("etcd", "etcd"), ("tool", "other"), ("apiserver-2", "api")]
    order = rolling_order(kinds, ("etcd", "api", "kubelet", "proxy", "dns"))
    assert order == ["etcd-2", "etcd", "apiserver", "apiserver-2", "kubelet-a", "kubelet-b", "proxy-a", "dns", "tool"]
    # Only what changed and runs is restarted (one not running just starts on its new program).
    assert upgrade_plan(order, {"dns", "etcd", "kubelet-b", "gone"}, {"dns", "kubelet-b", "etcd-2", "gone"}) == [
        "kubelet-b", "dns"]
    assert upgrade_plan(order, set(), set(order)) == []


def test_make_up_rolls_etcd_api_servers_controller_managers_replicators_kubelets_proxies_then_dns():
    names = [("etcd", "etcd"), ("etcd-2", "etcd"), ("apiserver", "kube-apiserver"),
             ("apiserver-2", "kube-apiserver"), ("replicator", "kube-replicator"),
             ("controller-manager", "kube-controller-manager"), ("controller-manager-2", "kube-controller-manager"),
             ("kubelet-n1", "kubelet"), ("proxy-n1", "kube-proxy"), ("kubelet-n2", "kubelet"),
             ("proxy-n2", "kube-proxy"), ("proxy-host", "kube-proxy"), ("dns", "kube-dns")]
    components = [Component(name, program, []) for name, program in names]
    assert [c.name for c in rolling(components)] == [
        "etcd", "etcd-2", "apiserver", "apiserver-2", "controller-manager", "controller-manager-2", "replicator",
        "kubelet-n1", "kubelet-n2", "proxy-n1", "proxy-n2", "proxy-host", "dns"]


@pytest.mark.parametrize("ha", [False, True])
def test_make_up_runs_a_controller_manager_per_api_server_and_no_controllers_in_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ha: bool
) -> None:
    captured: list[argparse.Namespace] = []
    monkeypatch.setattr(localcluster, "up", lambda parsed: captured.append(parsed) or 0)
    with pytest.raises(SystemExit):
        localcluster.main([
            "up", "--state-dir", str(tmp_path), "--user-kubeconfig", "", "--cluster-cidr", "10.210.0.0/16",
            "--controller-manager-arg=--node-monitor-grace-period=15s", *(["--ha"] if ha else []),
        ])
    plan = localcluster.plan_cluster(captured[0])
    by_program: dict[str, list[Component]] = {}
    for component in plan.components:
        by_program.setdefault(component.program, []).append(component)
    servers, managers = by_program["kube-apiserver"], by_program["kube-controller-manager"]
    assert [c.name for c in managers] == (["controller-manager", "controller-manager-2"] if ha
                                          else ["controller-manager"])
    assert len(servers) == len(managers)
    # Each API server, as it parses its flags: no controller runs in it; it keeps the pod range it checks.
    for server in servers:
        parsed = apiserver_args(server.args)
        assert parsed.controllers == "" and parsed.cluster_cidr == "10.210.0.0/16"
    identities = set()
    for manager in managers:
        parsed = controller_manager_args(manager.args)
        assert parsed.controllers.split(",") == list(CONTROLLERS)
        assert parsed.server == plan.api and len(parsed.server.split(",")) == len(servers)
        assert parsed.kubeconfig == str(tmp_path / "controller-manager.conf")
        assert parsed.cluster_cidr == "10.210.0.0/16" and parsed.node_monitor_grace_period == 15
        identities.add(parsed.leader_elect_identity)
    assert len(identities) == len(managers)  # each its own, stable across its restarts
    assert localcluster.PROGRAMS["kube-controller-manager"] == "services.apiserver.controllers"


def test_a_machines_programs_are_added_or_replaced_in_place(tmp_path):
    kubelet, proxy = (Program(name, ("/bin/" + name,), tmp_path / f"{name}.log") for name in ("kubelet", "proxy"))
    assert with_program([], kubelet) == [kubelet]
    assert with_program([kubelet], proxy) == [kubelet, proxy]
    newer = Program("kubelet", ("/bin/kubelet", "--v"), tmp_path / "kubelet.log")
    assert with_program([kubelet, proxy], newer) == [newer, proxy]

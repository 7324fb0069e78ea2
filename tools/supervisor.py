"""Process mode's supervisor (issue 17): every component of `make up` runs under supervisord.

supervisord is the well-kept process supervisor of the Python world: it restarts a
component that dies (at once after a crash, with a back-off when it keeps failing
to start), stops them in order, and answers over XML-RPC on a unix socket, so that
`make status` reads the supervisor's truth (state, pid, uptime) and no hand-written
babysitter is needed. `make up` writes its configuration under the state directory
(one [program:x] per component, logging to the same <state>/logs/<name>.log as
before), starts supervisord if it is not running and asks it to start each
component in order; `make down` shuts it down with everything under it.

Restart counts: supervisord keeps none, so a small event listener (`python -m
tools.supervisor listen FILE`, an [eventlistener] of the same supervisord) appends
every PROCESS_STATE event to <state>/supervisor/events.jsonl, and a restart is a
STARTING event from EXITED (restarted after it died) or from BACKOFF (retried after
a failed start). That is the event protocol supervisord documents, with the state it
came from: unlike counting 'spawned:' lines in supervisord's own log, it does not
depend on log wording or log rotation, and it tells a restart apart from a start
asked for by `make up` (STARTING from STOPPED or FATAL) or a reboot. Events are
buffered by supervisord while the listener is (re)starting, so none is lost.

Upgrades: each program carries a digest of what it runs (program_digest: its module's source
trees and its argv, or a binary's file), as $KYBERNETES_CODE_DIGEST in its environment; new
code is then a changed program to supervisord, which `update(keep=...)` leaves running for
`make up` to replace one at a time, in dependency order, each healthy before the next.

A joined machine (scripts/join-node.sh) runs its kubelet and proxy under a supervisord of its
own, under the node's state directory: `python -m tools.supervisor run STATE NAME LOG -- ARGV`
adds a program and starts it (and supervisord), `state STATE NAME` tells its state, `shutdown
STATE` stops everything.

Everything here is plain functions (configuration rendering, status parsing, event
counting, digests and the rolling order; unit-tested in tests/unit/test_supervisor.py) and a
thin XML-RPC client.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping, Sequence, TextIO

# A component's stop: SIGTERM, then SIGKILL after this long (what `make down` did before).
STOP_WAIT_SECONDS = 15
# Up this long counts as started (RUNNING): a restarted component is so after 3 s (it answers
# before: `make up` and `make status` probe its health from STARTING on). Not 1 s: a Python
# component needs 0.7-1.6 s here only to import, so one that cannot start (a bad flag, a port
# in use) exits after 1-2 s, and with 1 s that looked like a crash of a running component,
# restarted at once and forever (seen: 11 restarts in 15 s) instead of backing off.
START_SECONDS = 3
# A component that dies within START_SECONDS of its start is retried after 1, 2, 3, ... s
# (supervisord's back-off), this many times (about 4 minutes in all), then FATAL until
# the next `make up`. A component that dies after running is restarted at once.
START_RETRIES = 20
# The event listener's program name (no component has it).
LISTENER = "kyb-events"
# Events supervisord keeps for the listener while it is busy or restarting (its default, 10,
# would overflow when a whole cluster starts at once).
LISTENER_BUFFER = 1024
# A unix socket's path must fit sun_path (108 bytes with the NUL), and supervisord binds it first
# under "<path>.<its pid>" (then renames it): room for a dot and a pid of up to 7 digits.
UNIX_PATH_MAX = 107 - 8
RESTARTED_FROM = frozenset({"EXITED", "BACKOFF"})
# Process states (supervisor.states.ProcessStates' names) in which supervisord is bringing it up.
COMING_UP = frozenset({"STARTING", "BACKOFF"})
# ... in which it runs no process and is not bringing one up.
STOPPED = frozenset({"STOPPED", "EXITED", "FATAL"})


@dataclass(frozen=True)
class Layout:
    """Where supervisord's files are, under a cluster's state directory."""

    state: Path

    @property
    def directory(self) -> Path:
        return self.state / "supervisor"

    @property
    def config(self) -> Path:
        return self.directory / "supervisord.conf"

    @property
    def pidfile(self) -> Path:
        return self.directory / "supervisord.pid"

    @property
    def events(self) -> Path:
        return self.directory / "events.jsonl"

    @property
    def log(self) -> Path:
        return self.state / "logs" / "supervisord.log"

    @property
    def listener_log(self) -> Path:
        return self.state / "logs" / f"{LISTENER}.log"

    @property
    def socket(self) -> Path:
        """<state>/supervisor.sock; a state directory too deep for a unix socket's path gets
        one named after it in the temporary directory instead."""
        path = self.state / "supervisor.sock"
        if len(str(path)) <= UNIX_PATH_MAX:
            return path
        digest = hashlib.sha256(str(self.state).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"kybernetes-supervisor-{digest}.sock"

    @property
    def server_url(self) -> str:
        """What supervisord gives its children as $SUPERVISOR_SERVER_URL (how orphans are found)."""
        return f"unix://{self.socket}"


@dataclass(frozen=True)
class Program:
    """One supervised component: its argv, its log, and its place in the start order;
    `digest`: what it runs (program_digest), given it as $KYBERNETES_CODE_DIGEST, so that new
    code is a changed program to supervisord and the running process says what it was started on."""

    name: str
    argv: tuple[str, ...]
    log: Path
    digest: str = ""


# -- what a program runs (upgrades) ---------------------------------------------

DIGEST_ENV = "KYBERNETES_CODE_DIGEST"
# The repository's trees a component's module runs from, beside its own package: the import
# contracts (pyproject.toml) let a component import only itself, services/common and the stubs.
SHARED_SOURCES = ("services/common", "generated")
DIGEST_LENGTH = 16


def runs(argv: Sequence[str]) -> tuple[str, str]:
    """What an argv runs: ("module", "services.kubelet.main") for `python -m MODULE ...`, else
    ("binary", its path); a wrapper's (nsenter's) own argv before `--` is not it."""
    command = list(argv)
    if command[:1] == ["nsenter"] and "--" in command:
        command = command[command.index("--") + 1:]
    if command and Path(command[0]).name.startswith("python"):
        for index, arg in enumerate(command[1:-1], start=1):
            if arg == "-m":
                return "module", command[index + 1]
            if not arg.startswith("-"):
                break
    return "binary", command[0] if command else ""


def module_sources(module: str) -> tuple[str, ...]:
    """The source trees (relative to the repository) a component module runs from: its package
    (services.apiserver.main: services/apiserver), services/common and generated/."""
    parts = module.split(".")
    package = "/".join(parts[:2]) if parts[0] == "services" and len(parts) > 2 else "/".join(parts[:-1] or parts)
    return (package, *(tree for tree in SHARED_SOURCES if tree != package))


def code_digest(argv: Sequence[str], sources: Mapping[str, str]) -> str:
    """What a program runs, in a few hex digits: its argv and each source it runs from (a name
    and its fingerprint: a file's content hash; a binary's path, mtime and size), in name
    order. A pure function: the same argv and sources, the same digest; any change, another."""
    digest = hashlib.sha256()
    for arg in argv:
        digest.update(arg.encode() + b"\0")
    digest.update(b"\1")
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + sources[name].encode() + b"\0")
    return digest.hexdigest()[:DIGEST_LENGTH]


@functools.lru_cache(maxsize=4096)
def _content_hash(path: Path, mtime_ns: int, size: int) -> str:
    # mtime and size are the cache's key only: a file that changed is read and hashed again.
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_fingerprints(repo: Path, trees: Iterable[str]) -> dict[str, str]:
    """Each Python file under the trees (relative name -> its content's hash); caches are not sources."""
    found = {}
    for tree in trees:
        for path in sorted((repo / tree).rglob("*.py")):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            stat = path.stat()
            found[str(path.relative_to(repo))] = _content_hash(path, stat.st_mtime_ns, stat.st_size)
    return found


def binary_fingerprint(command: str) -> dict[str, str]:
    """A binary's fingerprint (its version is its file: where it resolves to, mtime and size)."""
    found = shutil.which(command) or command
    try:
        real = os.path.realpath(found)
        stat = os.stat(real)
    except OSError:
        return {found: "missing"}
    return {real: f"{stat.st_mtime_ns}:{stat.st_size}"}


def program_digest(argv: Sequence[str], repo: Path) -> str:
    """code_digest of what `argv` runs now: a module's source trees in `repo`, or a binary."""
    kind, what = runs(argv)
    sources = source_fingerprints(repo, module_sources(what)) if kind == "module" else binary_fingerprint(what)
    return code_digest(argv, sources)


def rolling_order(programs: Sequence[tuple[str, str]], ranks: Sequence[str]) -> list[str]:
    """Names in the order a rolling restart takes them, from (name, kind) pairs: by the kind's
    place in `ranks` (what others depend on first), then as given; an unranked kind last."""
    rank = {kind: index for index, kind in enumerate(ranks)}
    ordered = sorted(enumerate(programs), key=lambda item: (rank.get(item[1][1], len(ranks)), item[0]))
    return [name for _, (name, _) in ordered]


def upgrade_plan(order: Sequence[str], changed: Collection[str], running: Collection[str]) -> list[str]:
    """Which programs a rolling upgrade restarts, in order: those whose configuration (argv,
    digest) changed and that run now (one not running just starts on the new one)."""
    return [name for name in order if name in changed and name in running]


def _value(program: str, text: str) -> str:
    """A configuration value: supervisord expands %(...)s and cuts ' ;' and ' #' comments."""
    if "\n" in text or any(f"{space}{mark}" in text for space in " \t" for mark in ";#"):
        raise ValueError(f"{program}: {text!r} cannot be written in supervisord's configuration")
    return text.replace("%", "%%")


def render_config(
    layout: Layout, programs: Iterable[Program], *, python: str, directory: Path, user: int | None = None
) -> str:
    """supervisord's configuration: the daemon's files under the state directory, the
    restart-counting event listener, and one [program:x] per component, started only when
    `make up` asks (so in order, each once the one before is healthy), restarted when it dies,
    stopped with SIGTERM then SIGKILL (its process group) after STOP_WAIT_SECONDS, in reverse
    order at shutdown (priority). `user`: who runs it (default: this process's user, which
    supervisord keeps: naming it only says so, instead of a warning in its log)."""
    listener = shlex.join([python, "-m", "tools.supervisor", "listen", str(layout.events)])
    lines = [
        "; Written by `make up` (tools/supervisor.py) on every run: edits here are overwritten.",
        "[supervisord]",
        f"user={os.getuid() if user is None else user}",
        f"logfile={_value('supervisord', str(layout.log))}",
        "logfile_maxbytes=10MB",
        "logfile_backups=2",
        "loglevel=info",
        f"pidfile={_value('supervisord', str(layout.pidfile))}",
        f"directory={_value('supervisord', str(directory))}",
        f"childlogdir={_value('supervisord', str(layout.log.parent))}",
        "",
        # A unix socket only: no TCP port, and only root (who runs the cluster) may connect.
        "[unix_http_server]",
        f"file={_value('supervisord', str(layout.socket))}",
        "chmod=0700",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl={_value('supervisorctl', layout.server_url)}",
        "",
        f"[eventlistener:{LISTENER}]",
        f"command={_value(LISTENER, listener)}",
        "events=PROCESS_STATE",
        f"buffer_size={LISTENER_BUFFER}",
        "priority=1",
        "autostart=true",
        "autorestart=true",
        f"directory={_value(LISTENER, str(directory))}",
        # Its stdout is the protocol with supervisord (not a log); what it says goes to stderr.
        "stdout_logfile=NONE",
        f"stderr_logfile={_value(LISTENER, str(layout.listener_log))}",
        "stderr_logfile_maxbytes=1MB",
        "stderr_logfile_backups=1",
        "",
    ]
    for index, program in enumerate(programs):
        if not program.name or any(mark in program.name for mark in ":, []"):
            raise ValueError(f"{program.name!r} is not a program name supervisord takes")
        lines += [
            f"[program:{program.name}]",
            f"command={_value(program.name, shlex.join(program.argv))}",
            f"directory={_value(program.name, str(directory))}",
            f"priority={100 + index}",
            "autostart=false",
            "autorestart=true",
            f"startsecs={START_SECONDS}",
            f"startretries={START_RETRIES}",
            "stopsignal=TERM",
            f"stopwaitsecs={STOP_WAIT_SECONDS}",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={_value(program.name, str(program.log))}",
            # One log file per component, never rotated (as before supervisord): tail and grep see it all.
            "stdout_logfile_maxbytes=0",
        ]
        if program.digest:
            if not program.digest.isalnum():
                raise ValueError(f"{program.name}: {program.digest!r} is not a digest")
            lines.append(f'environment={DIGEST_ENV}="{program.digest}"')
        lines.append("")
    return "\n".join(lines)


# -- status ---------------------------------------------------------------


@dataclass(frozen=True)
class ProcessInfo:
    """What supervisord says of one program (getProcessInfo's fields we use)."""

    name: str
    state: str  # RUNNING, STARTING, BACKOFF, STOPPED, EXITED, FATAL, STOPPING, UNKNOWN
    pid: int
    uptime: float  # seconds since its last start (0 unless running)
    description: str = ""

    @classmethod
    def from_rpc(cls, info: dict[str, Any]) -> ProcessInfo:
        state = str(info.get("statename", "UNKNOWN"))
        uptime = float(info.get("now", 0)) - float(info.get("start", 0)) if state == "RUNNING" else 0.0
        return cls(str(info["name"]), state, int(info.get("pid") or 0), max(uptime, 0.0),
                   str(info.get("description", "")))


def restart_counts(lines: Iterable[str]) -> Counter[str]:
    """Restarts per program from the listener's events: STARTING from EXITED or BACKOFF.
    A line that is not a whole JSON event (a write cut short by a crash) is skipped."""
    counts: Counter[str] = Counter()
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if (isinstance(event, dict) and event.get("event") == "PROCESS_STATE_STARTING"
                and event.get("from") in RESTARTED_FROM):
            counts[str(event.get("process", ""))] += 1
    return counts


def format_uptime(seconds: float) -> str:
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    clock = f"{hours}:{minutes:02}:{seconds:02}"
    return f"{days}d{clock}" if days else clock


@dataclass(frozen=True)
class StatusRow:
    name: str
    state: str
    pid: int
    uptime: float
    restarts: int
    healthy: bool
    log: str


STATUS_HEADER = ("COMPONENT", "STATE", "PID", "UPTIME", "RESTARTS", "HEALTH", "LOG")


def format_status(rows: Iterable[StatusRow]) -> list[str]:
    """`make status`'s table, one line per component (and the header)."""
    template = "{:<24} {:<9} {:>7} {:>9} {:>8}  {:<8} {}"
    out = [template.format(*STATUS_HEADER)]
    for row in rows:
        running = row.state == "RUNNING"
        out.append(template.format(
            row.name, row.state, row.pid if row.pid else "-", format_uptime(row.uptime) if running else "-",
            row.restarts, "healthy" if row.healthy else "DOWN", row.log,
        ))
    return out


def parse_restarts_column(status_output: str) -> dict[str, int]:
    """RESTARTS per component from `make status`'s output (what a test or a script reads)."""
    lines = status_output.splitlines()
    header = next((index for index, line in enumerate(lines) if line.split()[:1] == ["COMPONENT"]), None)
    if header is None:
        return {}
    column = lines[header].split().index("RESTARTS")
    counts = {}
    for line in lines[header + 1:]:
        fields = line.split()
        if len(fields) > column and fields[column].isdigit():
            counts[fields[0]] = int(fields[column])
    return counts


# -- the event listener -----------------------------------------------------


def event_record(headers: dict[str, str], payload: str, now: float) -> dict[str, Any]:
    """One JSON line of the events file from an event's header and payload
    ('processname:x groupname:x from_state:RUNNING pid:123 ...')."""
    body = dict(field.split(":", 1) for field in payload.split() if ":" in field)
    record: dict[str, Any] = {
        "at": round(now, 3), "event": headers.get("eventname", ""), "process": body.get("processname", ""),
        "from": body.get("from_state", ""),
    }
    for key in ("pid", "expected", "tries"):
        if key in body:
            record[key] = int(body[key]) if body[key].lstrip("-").isdigit() else body[key]
    return record


def listen(events: Path, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    """supervisord's event listener protocol: READY, read one event, append it, OK; until EOF."""
    events.parent.mkdir(parents=True, exist_ok=True)
    with open(events, "a") as out:
        while True:
            stdout.write("READY\n")
            stdout.flush()
            line = stdin.readline()
            if not line:
                return
            headers = dict(field.split(":", 1) for field in line.split())
            payload = stdin.read(int(headers.get("len", "0")))
            if headers.get("eventname", "").startswith("PROCESS_STATE"):
                out.write(json.dumps(event_record(headers, payload, time.time())) + "\n")
                out.flush()
                os.fsync(out.fileno())
            stdout.write("RESULT 2\nOK")
            stdout.flush()


# -- the supervisor, over XML-RPC ---------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's unix socket, with a timeout (a stopped daemon must not hang a caller)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _UnixConnection(self._path, self._timeout)


class SupervisorError(Exception):
    pass


# supervisor.xmlrpc.Faults
_BAD_NAME = 10
_ALREADY_STARTED = 60
_NOT_RUNNING = 70


class Supervisor:
    """A cluster's supervisord: started, asked and shut down through its unix socket."""

    def __init__(self, state: Path, timeout: float = 10.0) -> None:
        self.layout = Layout(state)
        self.timeout = timeout

    def _rpc(self) -> Any:
        proxy = xmlrpc.client.ServerProxy(
            "http://localhost", transport=_UnixTransport(str(self.layout.socket), self.timeout)
        )
        return proxy.supervisor

    def running(self) -> bool:
        try:
            return self._rpc().getState().get("statename") == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def pid(self) -> int:
        try:
            return int(self._rpc().getPID())
        except (OSError, xmlrpc.client.Error):
            return 0

    def processes(self) -> dict[str, ProcessInfo]:
        """Every program's state (the listener's included); empty when supervisord is not answering."""
        try:
            infos = self._rpc().getAllProcessInfo()
        except (OSError, xmlrpc.client.Error):
            return {}
        return {info["name"]: ProcessInfo.from_rpc(info) for info in infos}

    def process(self, name: str) -> ProcessInfo | None:
        try:
            return ProcessInfo.from_rpc(self._rpc().getProcessInfo(name))
        except xmlrpc.client.Fault as fault:
            if fault.faultCode == _BAD_NAME:
                return None
            raise SupervisorError(f"{name}: {fault.faultString}") from None
        except OSError:
            return None

    def pids(self) -> dict[str, int]:
        """The live pid of each running program."""
        return {name: info.pid for name, info in self.processes().items() if info.pid}

    def restarts(self) -> Counter[str]:
        try:
            with open(self.layout.events) as events:
                return restart_counts(events)
        except OSError:
            return Counter()

    def write_config(self, programs: Iterable[Program], *, python: str, directory: Path) -> None:
        self.layout.directory.mkdir(parents=True, exist_ok=True)
        self.layout.log.parent.mkdir(parents=True, exist_ok=True)
        text = render_config(self.layout, programs, python=python, directory=directory)
        tmp = self.layout.config.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.layout.config)

    def start_daemon(self, python: str, timeout: float = 30.0) -> None:
        """Starts supervisord (it daemonizes: the command returns once it has forked) and
        waits until it answers on its socket."""
        done = subprocess.run(
            [python, "-m", "supervisor.supervisord", "-c", str(self.layout.config)],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise SupervisorError(f"supervisord did not start: {(done.stderr or done.stdout).strip()}")
        deadline = time.monotonic() + timeout
        while not self.running():
            if time.monotonic() > deadline:
                raise SupervisorError(f"supervisord is not answering on {self.layout.socket}; see {self.layout.log}")
            time.sleep(0.05)

    def update(self, keep: Collection[str] = ()) -> tuple[list[str], list[str]]:
        """What `supervisorctl update` does, but for a rolling upgrade: re-reads the
        configuration; a program that was added is added, one that went is stopped and
        removed, one that changed is stopped and replaced at once, unless it is in `keep`
        and running (the caller replaces those one at a time: `replace`). Returns (those
        replaced or removed now, those changed and kept running on their old configuration)."""
        rpc = self._rpc()
        [[added, changed, removed]] = rpc.reloadConfig()
        infos = self.processes()
        kept = [name for name in changed if name in keep and name in infos and infos[name].state not in STOPPED]
        now = [name for name in changed if name not in kept]
        for name in [*removed, *now]:
            self._stop_group(name)
            rpc.removeProcessGroup(name)
        for name in [*now, *added]:
            rpc.addProcessGroup(name)
        return [*now, *removed], kept

    def replace(self, name: str) -> None:
        """Stops a program (SIGTERM, SIGKILL after STOP_WAIT_SECONDS) and gives it the configuration
        last read (update); it is not started again: the caller starts it (start)."""
        self._stop_group(name)
        rpc = self._rpc()
        try:
            rpc.removeProcessGroup(name)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != _BAD_NAME:
                raise SupervisorError(f"{name}: {fault.faultString}") from None
        rpc.addProcessGroup(name)

    def started_digest(self, name: str) -> str:
        """The digest a running program was started with (its $KYBERNETES_CODE_DIGEST); "" if unknown."""
        info = self.process(name)
        return process_digest(info.pid) if info and info.pid else ""

    def _stop_group(self, name: str) -> None:
        try:
            self._rpc().stopProcessGroup(name, False)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode not in (_BAD_NAME, _NOT_RUNNING):
                raise
        deadline = time.monotonic() + STOP_WAIT_SECONDS + 5
        while time.monotonic() < deadline:
            info = self.process(name)
            if info is None or info.state in STOPPED:
                return
            time.sleep(0.1)

    def start(self, name: str) -> None:
        """Asks supervisord to start a program, without waiting (the caller waits for its health)."""
        try:
            self._rpc().startProcess(name, False)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != _ALREADY_STARTED:
                raise SupervisorError(f"{name}: {fault.faultString}") from None

    def stop(self, name: str) -> None:
        """Asks supervisord to stop a program (SIGTERM, SIGKILL after STOP_WAIT_SECONDS), without
        waiting; it is not restarted when it exits."""
        try:
            self._rpc().stopProcess(name, False)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != _NOT_RUNNING:
                raise SupervisorError(f"{name}: {fault.faultString}") from None

    def restart(self, name: str) -> None:
        self._stop_group(name)
        self.start(name)

    def shutdown(self, timeout: float) -> bool:
        """Stops every program (in reverse start order, each SIGTERM then SIGKILL) and
        supervisord; True once it has exited."""
        pid = self.pid()
        try:
            self._rpc().shutdown()
        except (OSError, xmlrpc.client.Error):
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid or not pid_alive(pid):
                return True
            time.sleep(0.1)
        return False

    def orphans(self) -> list[int]:
        """Processes this cluster's supervisord started and that outlived it (it was killed):
        each carries $SUPERVISOR_SERVER_URL naming this cluster's socket."""
        return supervised_by(self.layout.server_url)

    def forget_restarts(self) -> None:
        self.layout.events.unlink(missing_ok=True)


def process_digest(pid: int, proc: Path = Path("/proc")) -> str:
    """$KYBERNETES_CODE_DIGEST of a process (what supervisord started it with); "" if none."""
    try:
        environ = (proc / str(pid) / "environ").read_bytes()
    except OSError:
        return ""
    prefix = f"{DIGEST_ENV}=".encode()
    return next((item[len(prefix):].decode() for item in environ.split(b"\0") if item.startswith(prefix)), "")


def supervised_by(server_url: str, proc: Path = Path("/proc")) -> list[int]:
    marker = f"SUPERVISOR_SERVER_URL={server_url}".encode()
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return sorted(found)


def pid_alive(pid: int) -> bool:
    """Whether pid is a live process (a zombie is not; 0 and below name none)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def terminate(pids: Iterable[int], timeout: float = float(STOP_WAIT_SECONDS)) -> None:
    """SIGTERM to each, then SIGKILL to those still alive after `timeout`."""
    pending = [pid for pid in pids if pid_alive(pid)]
    for pid in pending:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = [pid for pid in pending if pid_alive(pid)]
        time.sleep(0.1)
    for pid in pending:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- a machine's own supervisord (scripts/join-node.sh) -------------------------

REPO = Path(__file__).resolve().parents[1]


def programs_file(layout: Layout) -> Path:
    """The programs `run` was given, for the next `run` to keep them (the configuration is rendered from it)."""
    return layout.directory / "programs.json"


def load_programs(layout: Layout) -> list[Program]:
    try:
        data = json.loads(programs_file(layout).read_text())
    except (OSError, ValueError):
        return []
    return [Program(item["name"], tuple(item["argv"]), Path(item["log"])) for item in data]


def with_program(programs: Sequence[Program], program: Program) -> list[Program]:
    """The programs with this one added, or put in place of the one of its name (keeping its place)."""
    names = [p.name for p in programs]
    if program.name in names:
        return [program if p.name == program.name else p for p in programs]
    return [*programs, program]


def run_program(state: Path, program: Program, timeout: float = 60.0) -> str:
    """Runs a program under the supervisord of `state` (a joined machine's node directory):
    the configuration is written with it (and the programs run before), supervisord started
    or told; a program already running on the same argv and code is left alone, one whose
    argv or code changed is restarted, one not running is started. Returns what was done."""
    supervisor = Supervisor(state)
    programs = with_program(load_programs(supervisor.layout), program)
    supervisor.layout.directory.mkdir(parents=True, exist_ok=True)
    programs_file(supervisor.layout).write_text(json.dumps(
        [{"name": p.name, "argv": list(p.argv), "log": str(p.log)} for p in programs], indent=2))
    digested = [Program(p.name, p.argv, p.log, program_digest(p.argv, REPO)) for p in programs]
    supervisor.write_config(digested, python=sys.executable, directory=REPO)
    if not supervisor.running():
        left = supervisor.orphans()
        if left:  # a killed supervisord's programs
            terminate(left)
        supervisor.start_daemon(sys.executable, timeout=timeout)
        done = "started"
    else:
        # The others changed are left running: each is restarted by its own `run`.
        _, kept = supervisor.update(keep=[p.name for p in programs])
        done = "started"
        if program.name in kept:
            supervisor.replace(program.name)
            done = "restarted (its argv or code changed)"
    info = supervisor.process(program.name)
    if info is not None and info.state not in STOPPED:
        return "already running" if done == "started" else done
    supervisor.start(program.name)
    return done


def shutdown_all(state: Path, timeout: float = STOP_WAIT_SECONDS * 3) -> list[str]:
    """Stops the supervisord of `state` and every program under it (and what a dead one left)."""
    supervisor = Supervisor(state)
    said = []
    if supervisor.running():
        names = [name for name in supervisor.processes() if name != LISTENER]
        pid = supervisor.pid()
        if not supervisor.shutdown(timeout=timeout):
            terminate([pid], timeout=0)
        said.append(f"stopped {', '.join(names) or 'nothing'} and supervisord")
    left = supervisor.orphans()
    if left:
        terminate(left)
        said.append(f"stopped {len(left)} process(es) a dead supervisord left")
    return said


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tools.supervisor", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("listen", help="supervisord's event listener (its configuration runs it)").add_argument("events")
    run = sub.add_parser("run", help="run a program under the supervisord of STATE (started if need be)")
    run.add_argument("state")
    run.add_argument("name")
    run.add_argument("log")
    run.add_argument("argv", nargs="+", help="after --: the program's command")
    state = sub.add_parser("state", help="a program's state (RUNNING, BACKOFF, ...; UNKNOWN if none)")
    state.add_argument("state")
    state.add_argument("name")
    sub.add_parser("shutdown", help="stop the supervisord of STATE and everything under it").add_argument("state")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "listen":
        listen(Path(args.events))
    elif args.command == "run":
        try:
            done = run_program(Path(args.state).resolve(), Program(args.name, tuple(args.argv), Path(args.log)))
        except (SupervisorError, ValueError) as error:
            raise SystemExit(f"{args.name}: {error}") from None
        print(f"{args.name}: {done} (log: {args.log})")
    elif args.command == "state":
        info = Supervisor(Path(args.state).resolve()).process(args.name)
        print(info.state if info else "UNKNOWN")
    else:
        for line in shutdown_all(Path(args.state).resolve()):
            print(line)


if __name__ == "__main__":
    main()

"""Starting and stopping the cluster's processes (dev only): used by `make up`, tests and benches."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from services.common.kubeconfig import KUBECONFIG_ENV
from tools.clusterpki import ClusterPKI

REPO = Path(__file__).resolve().parents[1]
# Kubernetes' default --service-node-port-range, which free_port() stays out of.
NODE_PORTS = range(30000, 32768)
# Where dev_pki() keeps its certificates: the test session sets it to a fresh directory.
DEV_PKI_ENV = "KYBERNETES_DEV_PKI"

_dev_pki: ClusterPKI | None = None


def dev_pki() -> ClusterPKI:
    """The certificates the dev processes here run with unless told otherwise, so that a
    process started by a test or a bench is as secure as `make up`'s: made once per
    directory ($KYBERNETES_DEV_PKI, else one per user under the temp dir)."""
    global _dev_pki
    root = Path(os.environ.get(DEV_PKI_ENV) or Path(tempfile.gettempdir()) / f"kybernetes-dev-pki-{os.getuid()}")
    if _dev_pki is None or _dev_pki.root != root:
        pki = ClusterPKI(root)
        pki.ensure_control_plane()
        pki.write_client_kubeconfigs("127.0.0.1:6443")  # the server is always given with --server
        pki.ensure_token_file()
        _dev_pki = pki
    return _dev_pki


def component_security_flags(
    component: str, *, node: str | None = None, addresses: tuple[str, ...] = (), pki: ClusterPKI | None = None
) -> list[str]:
    """The identity and TLS flags a dev component runs with (pass --server beside them):
    kubelet (its node's client certificate and serving certificate), proxy (kube-proxy's,
    serving its Status service with it), dns, replicator and controllers."""
    pki = pki or dev_pki()
    if component == "kubelet":
        assert node is not None, "a kubelet's identity is its node's"
        directory = pki.ensure_node(node, addresses)
        kubeconfig_path = pki.write_node_kubeconfig(node, "127.0.0.1:6443")
        return ["--kubeconfig", str(kubeconfig_path), *pki.serving_flags("kubelet", directory)]
    if component == "proxy":
        if node is not None and addresses:
            directory = pki.ensure_node(node, addresses)
            return ["--kubeconfig", str(pki.root / "kube-proxy.conf"), *pki.serving_flags("kube-proxy", directory)]
        return ["--kubeconfig", str(pki.root / "kube-proxy.conf"), *pki.serving_flags("kube-proxy")]
    if component == "dns":
        return ["--kubeconfig", str(pki.root / "kube-dns.conf")]
    if component in ("replicator", "controllers"):
        return ["--kubeconfig", str(pki.root / "controller-manager.conf")]
    raise ValueError(f"unknown component {component!r}")


def use_dev_credentials() -> ClusterPKI:
    """Makes this process and the ones it starts clients as dev_pki()'s admin (through
    $KYBERNETES_CONFIG, unless it is set already): what a bench does before it starts a cluster."""
    pki = dev_pki()
    os.environ.setdefault(KUBECONFIG_ENV, str(pki.root / "admin.conf"))
    return pki


def apiserver_security_flags(pki: ClusterPKI) -> list[str]:
    """What a dev API server is started with: TLS, tokens, etcd's client certificate, and the
    in-process controllers' kubeconfig."""
    token_file, _ = pki.ensure_token_file()
    return [
        *pki.apiserver_flags(token_file=token_file, bootstrap_token_file=pki.bootstrap_token_file),
        "--controllers-kubeconfig", str(pki.root / "controller-manager.conf"),
    ]


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(count: int = 1) -> int:
    """A loopback port nothing uses now (the first of `count` consecutive ones).

    Chosen below the kernel's ephemeral range: a port the kernel handed out for
    bind(0) is also what it hands out as the source port of outgoing
    connections, so under a busy test run another process could take it
    between the pick and the listen (seen: etcd's peer port, base + 1). Nor in
    the node port range: a NodePort service of any cluster on this machine is
    answered there on every node address, loopback included, and the API server
    refuses to listen inside its own range."""
    low, _ = _ephemeral_range()
    rng = random.SystemRandom()
    for _ in range(1000):
        base = rng.randrange(10_000, max(10_001, low - count))
        ports = range(base, base + count)
        if any(port in NODE_PORTS for port in ports):
            continue
        if all(_bindable(port) for port in ports):
            return base
    raise RuntimeError("no free loopback port below the ephemeral range")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for_port(
    port: int, process: subprocess.Popen | None = None, timeout: float = 30.0, host: str = "127.0.0.1"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} before listening on {host}:{port}")
        if port_open(port, host):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f}s")


class ManagedProcess:
    """A child process logging to a file, stopped with SIGTERM then SIGKILL.

    Without a log_path it logs to a temporary file, removed when it stops."""

    def __init__(
        self, name: str, argv: list[str], log_path: str | os.PathLike | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self._owns_log = log_path is None
        if log_path is None:
            log_path = tempfile.mktemp(prefix=f"kyb-{name}-", suffix=".log")
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # a Ctrl-C in the terminal is for us, not for the cluster
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        if self._owns_log:
            self.log_path.unlink(missing_ok=True)
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


def etcd_argv(
    data_dir: str | os.PathLike,
    client_port: int,
    peer_port: int,
    tls_flags: list[str] | None = None,
    *,
    name: str = "default",
    peers: dict[str, int] | None = None,
) -> list[str]:
    """etcd on loopback; with tls_flags (ClusterPKI.etcd_flags) both ports are TLS with
    client-certificate authentication. peers: a cluster's members (name -> peer port),
    this one among them; none: a cluster of one."""
    scheme = "https" if tls_flags else "http"
    endpoint = f"{scheme}://127.0.0.1:{client_port}"
    peer = f"{scheme}://127.0.0.1:{peer_port}"
    members = peers or {name: peer_port}
    initial_cluster = ",".join(f"{member}={scheme}://127.0.0.1:{port}" for member, port in members.items())
    # A lone member has nobody to hear from, so nothing to gain from waiting: on each start it
    # elects itself only after a randomized election timeout (1-2 s by default: writes resumed
    # 1.1-1.9 s after a kill -9 and an immediate restart; 0.13-0.20 s with these). Its ticks
    # cost ~1% of a core. Several members keep etcd's defaults: short timeouts on a busy
    # machine would make them elect needlessly.
    timing = ["--heartbeat-interval", "10", "--election-timeout", "100"] if len(members) == 1 else []
    return [
        shutil.which("etcd") or "/usr/bin/etcd",
        "--name", name,
        "--data-dir", str(data_dir),
        "--listen-client-urls", endpoint,
        "--advertise-client-urls", endpoint,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", initial_cluster,
        "--log-level", "error",
        *timing,
        *(tls_flags or []),
    ]


class EtcdProcess(ManagedProcess):
    """etcd on loopback with its own data dir."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        client_port: int | None = None,
        log_path: str | os.PathLike | None = None,
        *,
        tls_flags: list[str] | None = None,
        insecure: bool = False,
    ) -> None:
        """TLS with client-certificate authentication (dev_pki's etcd CA) unless insecure."""
        if tls_flags is None and not insecure:
            tls_flags = dev_pki().etcd_flags()
        self.data_dir = Path(data_dir)
        self.port = client_port or free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        super().__init__(
            "etcd",
            etcd_argv(self.data_dir / "data", self.port, free_port(), tls_flags),
            log_path or self.data_dir / "etcd.log",
        )
        wait_for_port(self.port, self.process)


def python_module_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class ApiServerProcess(ManagedProcess):
    """`kube-apiserver` as its own process, as users run it."""

    def __init__(
        self,
        etcd_endpoint: str,
        *extra_args: str,
        port: int | None = None,
        log_path: str | os.PathLike | None = None,
        security: list[str] | None = None,
        insecure: bool = False,
        rest: bool = False,
    ) -> None:
        """security: the TLS and authentication flags (default: dev_pki's, see
        apiserver_security_flags); insecure runs it --insecure-dev (a bench's baseline);
        rest serves the Kubernetes REST API too, on a free port (rest_address)."""
        if insecure:
            security = ["--insecure-dev"]
        elif security is None:
            security = apiserver_security_flags(dev_pki())
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        # The bearer-token port (TLS without client certificates), beside the certificate one.
        self.token_address = ""
        if not insecure and "--token-listen" not in extra_args:
            self.token_address = f"127.0.0.1:{free_port()}"
            security = [*security, "--token-listen", self.token_address]
        # The Kubernetes REST API's address (kubectl's server: https://<rest_address>), when asked for.
        self.rest_address = ""
        if rest and "--rest-listen" not in extra_args:
            self.rest_address = f"127.0.0.1:{free_port()}"
            security = [*security, "--rest-listen", self.rest_address]
        super().__init__(
            "apiserver",
            python_module_argv(
                "services.apiserver.main", "--listen", self.address, "--etcd-servers", etcd_endpoint,
                *security, *extra_args,
            ),
            log_path,
        )
        try:
            wait_for_port(self.port, self.process)
            if self.rest_address:  # opened just after the gRPC port
                wait_for_port(int(self.rest_address.rpartition(":")[2]), self.process)
        except Exception as error:
            self.stop()
            raise RuntimeError(f"the API server did not start: {error}\n{self.log_tail()}") from error

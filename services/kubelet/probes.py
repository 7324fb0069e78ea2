"""Liveness and readiness probes: exec, tcpSocket and httpGet.

One task per running container and probe kind. A result flips only after
failureThreshold failures (or successThreshold successes) in a row; every flip
tells the pod's worker, which restarts on a failed liveness probe and reports
readiness in the pod's status.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Callable

from kybernetes.v1 import pod_pb2
from services.common.events import WARNING, NullRecorder, Recorder, reference
from services.common.log import get_logger

from .containers import ContainerInfo
from .runtime import ContainerRuntime

LIVENESS = "liveness"
READINESS = "readiness"

DEFAULT_TIMEOUT_SECONDS = 1
DEFAULT_PERIOD_SECONDS = 10
DEFAULT_SUCCESS_THRESHOLD = 1
DEFAULT_FAILURE_THRESHOLD = 3
_MAX_HTTP_RESPONSE_HEAD = 64 * 1024


class ProbeError(Exception):
    """The probe could not even be tried (a port name that does not exist)."""


def resolve_port(value: str, container: pod_pb2.Container) -> int:
    """A probe port: a number, or the name of one of the container's ports."""
    if value.isdigit():
        return int(value)
    for port in container.ports:
        if port.name and port.name == value:
            return port.container_port
    raise ProbeError(f"port {value!r} is neither a number nor the name of a port of container {container.name!r}")


async def tcp_check(host: str, port: int, timeout: float) -> tuple[bool, str]:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except asyncio.TimeoutError:
        return False, f"dial tcp {host}:{port}: timed out after {timeout:g}s"
    except OSError as error:
        return False, f"dial tcp {host}:{port}: {error.strerror or error}"
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True, ""


async def http_check(
    host: str, port: int, path: str, timeout: float, *, scheme: str = "HTTP",
    headers: list[tuple[str, str]] | None = None,
) -> tuple[bool, str]:
    """GET http(s)://host:port/path: a status from 200 to 399 succeeds."""
    secure = scheme.upper() == "HTTPS"
    context = None
    if secure:
        context = ssl.create_default_context()
        context.check_hostname = False  # as Kubernetes: no certificate checks for probes
        context.verify_mode = ssl.CERT_NONE
    url = f"{'https' if secure else 'http'}://{host}:{port}{path or '/'}"

    async def get() -> tuple[bool, str]:
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
        try:
            lines = [f"GET {path or '/'} HTTP/1.0", f"Host: {host}:{port}", "User-Agent: kybernetes-probe/1.0",
                     "Accept: */*", "Connection: close"]
            lines += [f"{name}: {value}" for name, value in headers or []]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.decode("latin-1").split()
            if len(parts) < 2 or not parts[1].isdigit():
                return False, f"GET {url}: malformed response {status_line[:80]!r}"
            code = int(parts[1])
            if 200 <= code < 400:
                return True, ""
            return False, f"GET {url}: HTTP probe failed with statuscode: {code}"
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(get(), timeout)
    except asyncio.TimeoutError:
        return False, f"GET {url}: timed out after {timeout:g}s"
    except (OSError, ssl.SSLError) as error:
        return False, f"GET {url}: {getattr(error, 'strerror', None) or error}"


@dataclass
class _ProbeWorker:
    uid: str
    pod_key: str
    kind: str
    container_id: str
    # None until the threshold decides: readiness starts unready, liveness healthy.
    result: bool | None = None
    task: asyncio.Task | None = None
    detail: str = ""
    # The container, as its events name it (the pod, fieldPath spec.containers{name}).
    ref: pod_pb2.ObjectReference | None = None


class ProbeManager:
    def __init__(
        self, runtime: ContainerRuntime, on_change: Callable[[str], None], recorder: Recorder | None = None
    ) -> None:
        self.runtime = runtime
        self._on_change = on_change
        # An Unhealthy event for every failed probe (the recorder aggregates repeats).
        self.recorder: Recorder = recorder or NullRecorder()
        self._workers: dict[tuple[str, str], _ProbeWorker] = {}
        self._tasks: set[asyncio.Task] = set()  # strong references until each task ends
        self._log = get_logger(module="kubelet.probes")

    def ensure(
        self, pod: pod_pb2.Pod, container: pod_pb2.Container, info: ContainerInfo, pod_ip: str,
        *, ready_before: bool = False,
    ) -> None:
        """Starts the probes of a running container (idempotent).

        ready_before: the pod's reported status already had this very container ready (a
        restarted kubelet): readiness starts there, not unready, and changes only as the
        probe's thresholds say. Kubernetes' kubelet starts it unready (kubernetes#78733,
        #100277): every service loses a restarted node's endpoints until they are probed
        again, and a service whose pods are all there stops answering."""
        for kind, probe_field in ((LIVENESS, "liveness_probe"), (READINESS, "readiness_probe")):
            if not container.HasField(probe_field):
                continue
            key = (info.id, kind)
            if key in self._workers:
                continue
            worker = _ProbeWorker(
                uid=pod.metadata.uid, pod_key=f"{pod.metadata.namespace}/{pod.metadata.name}",
                kind=kind, container_id=info.id, result=True if kind == READINESS and ready_before else None,
            )
            worker.ref = reference(pod)
            worker.ref.field_path = f"spec.containers{{{container.name}}}"
            self._workers[key] = worker
            probe = pod_pb2.Probe()
            probe.CopyFrom(getattr(container, probe_field))
            spec = pod_pb2.Container()
            spec.CopyFrom(container)
            worker.task = asyncio.get_running_loop().create_task(self._run(worker, probe, spec, pod_ip))
            self._tasks.add(worker.task)
            worker.task.add_done_callback(self._tasks.discard)

    def is_ready(self, container: pod_pb2.Container, container_id: str) -> bool:
        if not container.HasField("readiness_probe"):
            return True
        worker = self._workers.get((container_id, READINESS))
        return bool(worker and worker.result)

    def liveness_failure(self, container_id: str) -> str | None:
        """Why the liveness probe failed, or None while it passes."""
        worker = self._workers.get((container_id, LIVENESS))
        if worker is not None and worker.result is False:
            return worker.detail or "liveness probe failed"
        return None

    def forget(self, container_ids: set[str]) -> None:
        """Stops probing containers that are not running any more."""
        for key in [key for key in self._workers if key[0] in container_ids]:
            self._stop(key)

    def forget_pod(self, uid: str, keep: set[str] | None = None) -> None:
        for key, worker in list(self._workers.items()):
            if worker.uid == uid and (keep is None or key[0] not in keep):
                self._stop(key)

    def close(self) -> None:
        for key in list(self._workers):
            self._stop(key)

    def _stop(self, key: tuple[str, str]) -> None:
        worker = self._workers.pop(key, None)
        if worker is not None and worker.task is not None:
            worker.task.cancel()

    async def _run(self, worker: _ProbeWorker, probe: pod_pb2.Probe, container: pod_pb2.Container, pod_ip: str) -> None:
        timeout = probe.timeout_seconds or DEFAULT_TIMEOUT_SECONDS
        period = probe.period_seconds or DEFAULT_PERIOD_SECONDS
        success_threshold = 1 if worker.kind == LIVENESS else (probe.success_threshold or DEFAULT_SUCCESS_THRESHOLD)
        failure_threshold = probe.failure_threshold or DEFAULT_FAILURE_THRESHOLD
        log = self._log.bind(pod=worker.pod_key, container=container.name, probe=worker.kind)
        successes = failures = 0
        try:
            if probe.initial_delay_seconds > 0:
                await asyncio.sleep(probe.initial_delay_seconds)
            while True:
                try:
                    ok, detail = await self._try(probe, container, worker.container_id, pod_ip, timeout)
                except ProbeError as error:
                    ok, detail = False, str(error)
                except Exception as error:  # a broken probe is a failed probe
                    ok, detail = False, f"probe error: {error}"
                if ok:
                    successes, failures = successes + 1, 0
                else:
                    successes, failures = 0, failures + 1
                    log.info("probe_failed", detail=detail, failures=failures)
                    if worker.ref is not None:
                        what = "Liveness" if worker.kind == LIVENESS else "Readiness"
                        self.recorder.event_on(worker.ref, WARNING, "Unhealthy", f"{what} probe failed: {detail}")
                new_result = worker.result
                if ok and successes >= success_threshold:
                    new_result = True
                elif not ok and failures >= failure_threshold:
                    new_result = False
                if new_result != worker.result:
                    worker.result = new_result
                    worker.detail = detail
                    log.info(
                        "probe_result_changed", result="success" if new_result else "failure", detail=detail or None
                    )
                    self._on_change(worker.uid)
                await asyncio.sleep(period)
        except asyncio.CancelledError:
            pass

    async def _try(
        self, probe: pod_pb2.Probe, container: pod_pb2.Container, container_id: str, pod_ip: str, timeout: float
    ) -> tuple[bool, str]:
        if probe.HasField("exec"):
            try:
                code, output = await self.runtime.exec(container_id, list(probe.exec.command), timeout)
            except asyncio.TimeoutError:
                return False, f"command {list(probe.exec.command)} timed out after {timeout:g}s"
            if code == 0:
                return True, ""
            text = output.decode(errors="replace").strip()[-200:]
            return False, f"command {list(probe.exec.command)} exited with {code}" + (f": {text}" if text else "")
        if probe.HasField("tcp_socket"):
            host = probe.tcp_socket.host or pod_ip
            return await tcp_check(host, resolve_port(probe.tcp_socket.port, container), timeout)
        if probe.HasField("http_get"):
            action = probe.http_get
            host = action.host or pod_ip
            headers = [(header.name, header.value) for header in action.http_headers]
            return await http_check(
                host, resolve_port(action.port, container), action.path, timeout,
                scheme=action.scheme or "HTTP", headers=headers,
            )
        raise ProbeError("the probe has no action: set exec, tcpSocket or httpGet")

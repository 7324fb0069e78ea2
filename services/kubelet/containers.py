"""What the kubelet knows about its Docker containers, kept current by Docker's
event stream, by the kubelet's own calls and by a periodic re-list.

Pod workers read this cache instead of asking Docker, so a sync that has
nothing to change costs no Docker call at all.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Callable

from .naming import (
    INFRA_CONTAINER_NAME,
    LABEL_CONTAINER_HASH,
    LABEL_CONTAINER_NAME,
    LABEL_POD_GRACE_PERIOD,
    LABEL_POD_IP,
    LABEL_POD_NAME,
    LABEL_POD_NAMESPACE,
    LABEL_POD_UID,
    LABEL_RESTART_COUNT,
    DEFAULT_GRACE_PERIOD_SECONDS,
)

CREATED = "created"
RUNNING = "running"
EXITED = "exited"
# A container only moves forward through these states (the kubelet never
# restarts a Docker container, it creates a new one), so an update carrying an
# older state than the one cached is stale and ignored.
_STATE_RANK = {CREATED: 0, RUNNING: 1, EXITED: 2}


def parse_docker_time(value: str | None) -> float | None:
    """Docker's RFC 3339 time with nanoseconds -> epoch seconds; its zero time -> None."""
    if not value or value.startswith("0001-01-01"):
        return None
    text = value.rstrip("Z")
    offset = "+00:00"
    for sign in ("+", "-"):
        position = text.rfind(sign)
        if position > 10:  # a numeric offset after the time, not a date dash
            text, offset = text[:position], text[position:]
            break
    if "." in text:
        whole, fraction = text.split(".", 1)
        text = f"{whole}.{fraction[:6].ljust(6, '0')}"
    return datetime.fromisoformat(text + offset).timestamp()


@dataclass(frozen=True)
class ContainerInfo:
    """One Docker container of this node, as far as the kubelet knows it."""

    id: str
    name: str
    labels: dict[str, str]
    state: str  # CREATED, RUNNING or EXITED
    created_at: float
    image: str = ""
    image_id: str = ""
    exit_code: int | None = None
    # Docker's error for a container that could not start (bad command, port taken).
    error: str = ""
    oom_killed: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    ip_address: str = ""
    pid: int = 0  # of the container's first process while it runs (from inspect)
    # The infra container whose namespaces an app container joins ("" for the infra).
    sandbox_id: str = ""

    @property
    def pod_uid(self) -> str:
        return self.labels.get(LABEL_POD_UID, "")

    @property
    def pod_key(self) -> str:
        return f"{self.labels.get(LABEL_POD_NAMESPACE, '')}/{self.labels.get(LABEL_POD_NAME, '')}"

    @property
    def container_name(self) -> str:
        return self.labels.get(LABEL_CONTAINER_NAME, "")

    @property
    def is_infra(self) -> bool:
        return self.container_name == INFRA_CONTAINER_NAME

    @property
    def on_pod_network(self) -> bool:
        """An infra container wired by the kubelet's pod network (not by Docker)."""
        return LABEL_POD_IP in self.labels

    @property
    def pod_ip(self) -> str:
        return self.labels.get(LABEL_POD_IP) or self.ip_address

    @property
    def spec_hash(self) -> str:
        return self.labels.get(LABEL_CONTAINER_HASH, "")

    @property
    def restart_count(self) -> int:
        try:
            return int(self.labels.get(LABEL_RESTART_COUNT, "0"))
        except ValueError:
            return 0

    @property
    def grace_period(self) -> int:
        try:
            return int(self.labels.get(LABEL_POD_GRACE_PERIOD, DEFAULT_GRACE_PERIOD_SECONDS))
        except ValueError:
            return DEFAULT_GRACE_PERIOD_SECONDS

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def exited(self) -> bool:
        return self.state == EXITED

    @property
    def failed_to_start(self) -> bool:
        return self.state == EXITED and bool(self.error) and self.started_at is None

    def ran_for(self) -> float:
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return max(0.0, self.finished_at - self.started_at)

    def sort_key(self) -> tuple[int, float]:
        """Newest attempt last."""
        return (self.restart_count, self.created_at)


def info_from_inspect(data: dict[str, Any]) -> ContainerInfo:
    """Builds a ContainerInfo from `docker inspect` output."""
    state = data.get("State") or {}
    status = state.get("Status", "")
    error = state.get("Error") or ""
    exit_code = state.get("ExitCode")
    if status in ("running", "paused", "restarting"):
        kind = RUNNING
    elif status == CREATED and not error and not exit_code:
        kind = CREATED
    else:
        # exited, dead, removing, or "created" after a start that failed
        # (Docker leaves those in "created" with an exit code and an error).
        kind = EXITED
    network = data.get("NetworkSettings") or {}
    ip_address = network.get("IPAddress") or ""
    if not ip_address:
        for settings in (network.get("Networks") or {}).values():
            if settings and settings.get("IPAddress"):
                ip_address = settings["IPAddress"]
                break
    config = data.get("Config") or {}
    network_mode = (data.get("HostConfig") or {}).get("NetworkMode") or ""
    created_at = parse_docker_time(data.get("Created")) or 0.0
    finished_at = parse_docker_time(state.get("FinishedAt"))
    if kind == EXITED and finished_at is None:
        finished_at = created_at  # a failed start: it ended when it was made
    return ContainerInfo(
        id=data["Id"],
        name=(data.get("Name") or "").lstrip("/"),
        labels=dict(config.get("Labels") or {}),
        state=kind,
        created_at=created_at,
        image=config.get("Image", ""),
        image_id=data.get("Image", ""),
        exit_code=exit_code if kind == EXITED else None,
        error=error,
        oom_killed=bool(state.get("OOMKilled")),
        started_at=parse_docker_time(state.get("StartedAt")),
        finished_at=finished_at if kind == EXITED else None,
        ip_address=ip_address,
        pid=(state.get("Pid") or 0) if kind == RUNNING else 0,
        sandbox_id=network_mode.removeprefix("container:") if network_mode.startswith("container:") else "",
    )


def summary_state(summary: dict[str, Any]) -> str:
    """The coarse state of a `docker ps -a` entry, comparable with ContainerInfo.state."""
    status = summary.get("State", "")
    if status in ("running", "paused", "restarting"):
        return RUNNING
    if status == CREATED:
        return CREATED
    return EXITED


@dataclass
class _Waiters:
    exited: list[asyncio.Future] = field(default_factory=list)


class ContainerCache:
    """Containers by id and by pod uid, with change notification per pod."""

    def __init__(self, on_pod_changed: Callable[[str], None] | None = None) -> None:
        self._by_id: dict[str, ContainerInfo] = {}
        self._by_pod: dict[str, dict[str, ContainerInfo]] = {}
        self._waiters: dict[str, _Waiters] = {}
        self._on_pod_changed = on_pod_changed

    def set_listener(self, on_pod_changed: Callable[[str], None]) -> None:
        self._on_pod_changed = on_pod_changed

    def get(self, container_id: str) -> ContainerInfo | None:
        return self._by_id.get(container_id)

    def all(self) -> list[ContainerInfo]:
        return list(self._by_id.values())

    def for_pod(self, uid: str) -> list[ContainerInfo]:
        return sorted(self._by_pod.get(uid, {}).values(), key=ContainerInfo.sort_key)

    def pod_uids(self) -> set[str]:
        return set(self._by_pod)

    def put(self, info: ContainerInfo, *, notify: bool = True) -> ContainerInfo:
        """Records what Docker said about a container; an older state than the
        one already known is ignored (it was read before a later change)."""
        current = self._by_id.get(info.id)
        if current is not None and _STATE_RANK[info.state] < _STATE_RANK[current.state]:
            return current
        if current is not None and info.state == current.state == RUNNING and not info.ip_address:
            info = replace(info, ip_address=current.ip_address)
        self._by_id[info.id] = info
        self._by_pod.setdefault(info.pod_uid, {})[info.id] = info
        if info.state == EXITED:
            self._resolve_exited(info.id)
        if notify and info != current:
            self._notify(info.pod_uid)
        return info

    def mark_exited(self, container_id: str, exit_code: int, finished_at: float, oom_killed: bool = False) -> None:
        """Applies a `die` event without asking Docker again."""
        current = self._by_id.get(container_id)
        if current is None or current.state == EXITED:
            return
        self.put(replace(
            current, state=EXITED, exit_code=exit_code, finished_at=finished_at,
            oom_killed=oom_killed or current.oom_killed,
        ))

    def mark_oom(self, container_id: str) -> None:
        current = self._by_id.get(container_id)
        if current is not None and not current.oom_killed:
            self._by_id[container_id] = replace(current, oom_killed=True)
            self._by_pod[current.pod_uid][container_id] = self._by_id[container_id]

    def remove(self, container_id: str) -> None:
        info = self._by_id.pop(container_id, None)
        if info is None:
            return
        pod = self._by_pod.get(info.pod_uid)
        if pod is not None:
            pod.pop(container_id, None)
            if not pod:
                del self._by_pod[info.pod_uid]
        self._resolve_exited(container_id)
        self._notify(info.pod_uid)

    async def wait_exited(self, container_id: str, timeout: float) -> bool:
        """True once the container is known to have exited (or to be gone)."""
        info = self._by_id.get(container_id)
        if info is None or info.state == EXITED:
            return True
        future = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(container_id, _Waiters()).exited.append(future)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(container_id)
            if waiters is not None and future in waiters.exited:
                waiters.exited.remove(future)
                if not waiters.exited:
                    del self._waiters[container_id]

    def _resolve_exited(self, container_id: str) -> None:
        waiters = self._waiters.pop(container_id, None)
        if waiters is None:
            return
        for future in waiters.exited:
            if not future.done():
                future.set_result(True)

    def _notify(self, uid: str) -> None:
        if self._on_pod_changed is not None and uid:
            self._on_pod_changed(uid)

"""The container cache: Docker's inspect output, ordering of updates, waiting."""

from __future__ import annotations

import asyncio

from services.kubelet.containers import (
    CREATED,
    EXITED,
    RUNNING,
    ContainerCache,
    ContainerInfo,
    info_from_inspect,
    parse_docker_time,
)


def _inspect(status: str, *, exit_code: int = 0, error: str = "", started: str = "2026-01-01T00:00:01.123456789Z",
             finished: str = "0001-01-01T00:00:00Z") -> dict:
    return {
        "Id": "abc", "Name": "/kyb_n_ns_p_c_u_0", "Created": "2026-01-01T00:00:00.5Z", "Image": "sha256:1",
        "Config": {"Image": "busybox", "Labels": {"io.kybernetes.pod.uid": "u", "io.kybernetes.container.name": "c"}},
        "State": {"Status": status, "ExitCode": exit_code, "Error": error, "OOMKilled": False,
                  "StartedAt": started, "FinishedAt": finished},
        "NetworkSettings": {"IPAddress": "", "Networks": {"bridge": {"IPAddress": "172.17.0.4"}}},
    }


def test_parse_docker_time() -> None:
    assert parse_docker_time("0001-01-01T00:00:00Z") is None
    assert parse_docker_time("") is None
    assert parse_docker_time("1970-01-01T00:00:01.5Z") == 1.5
    assert parse_docker_time("1970-01-01T00:00:02.123456789Z") == 2.123456
    assert parse_docker_time("1970-01-01T01:00:00+01:00") == 0.0


def test_inspect_states() -> None:
    running = info_from_inspect(_inspect("running"))
    assert running.state == RUNNING and running.name == "kyb_n_ns_p_c_u_0"
    assert running.ip_address == "172.17.0.4" and running.pod_uid == "u" and running.container_name == "c"
    assert running.exit_code is None

    exited = info_from_inspect(_inspect("exited", exit_code=3, finished="2026-01-01T00:00:11.123456789Z"))
    assert exited.state == EXITED and exited.exit_code == 3
    assert round(exited.ran_for(), 3) == 10.0

    # Docker leaves a container whose start failed in "created", with the error.
    failed = info_from_inspect(
        _inspect("created", exit_code=127, error="exec: not found", started="0001-01-01T00:00:00Z")
    )
    assert failed.state == EXITED and failed.failed_to_start and failed.exit_code == 127
    assert failed.finished_at == failed.created_at

    fresh = info_from_inspect(_inspect("created", started="0001-01-01T00:00:00Z"))
    assert fresh.state == CREATED


def test_inspect_names_the_sandbox_an_app_container_joins() -> None:
    app = _inspect("created", started="0001-01-01T00:00:00Z")
    app["HostConfig"] = {"NetworkMode": "container:infra123"}
    assert info_from_inspect(app).sandbox_id == "infra123"
    infra = _inspect("running")
    infra["HostConfig"] = {"NetworkMode": "default"}
    assert info_from_inspect(infra).sandbox_id == ""
    assert info_from_inspect(_inspect("running")).sandbox_id == ""


def _info(state: str, **extra) -> ContainerInfo:
    return ContainerInfo(
        id="abc", name="n", labels={"io.kybernetes.pod.uid": "u"}, state=state, created_at=1.0, **extra
    )


def test_cache_never_goes_back_to_an_older_state_and_notifies_per_pod() -> None:
    changed: list[str] = []
    cache = ContainerCache(changed.append)
    cache.put(_info(CREATED))
    cache.put(_info(RUNNING, started_at=2.0, ip_address="172.17.0.3"))
    cache.put(_info(CREATED))  # a stale read
    assert cache.get("abc").state == RUNNING
    cache.put(_info(RUNNING, started_at=2.0))  # no IP in this update: the known one stays
    assert cache.get("abc").ip_address == "172.17.0.3"
    cache.mark_exited("abc", 137, 5.0)
    assert cache.get("abc").state == EXITED and cache.get("abc").exit_code == 137
    cache.put(_info(RUNNING))
    assert cache.get("abc").state == EXITED
    assert [c.id for c in cache.for_pod("u")] == ["abc"]
    cache.remove("abc")
    assert cache.for_pod("u") == [] and cache.pod_uids() == set()
    assert set(changed) == {"u"} and len(changed) >= 4


async def test_wait_exited() -> None:
    cache = ContainerCache()
    cache.put(_info(RUNNING))
    assert not await cache.wait_exited("abc", 0.05)
    waiter = asyncio.create_task(cache.wait_exited("abc", 5))
    await asyncio.sleep(0)
    cache.mark_exited("abc", 0, 3.0)
    assert await waiter
    assert await cache.wait_exited("unknown", 0.01)

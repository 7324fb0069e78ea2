"""The proxy's round robin, skip of failed backends and ClientIP affinity, as tables."""

from __future__ import annotations

import pytest

from services.proxy.balancer import RoundRobinBalancer

A, B, C, D = ("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80), ("10.0.0.4", 80)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_script(balancer: RoundRobinBalancer, clock: FakeClock, script: list[tuple]) -> list:
    """Plays connections: ("conn", client_ip, dead_backends) connects the client
    trying backends in plan order, skipping the dead ones; ("wait", seconds)
    advances the clock; ("set", backends) replaces the set. Returns, for each
    connection, the backend it reached (None when none could be reached)."""
    reached = []
    for step in script:
        if step[0] == "wait":
            clock.now += step[1]
        elif step[0] == "set":
            balancer.set_backends(step[1])
        else:
            _, client_ip, dead = step
            for backend in balancer.plan(client_ip):
                if backend in dead:
                    balancer.failed(backend)
                    continue
                balancer.succeeded(client_ip, backend)
                reached.append(backend)
                break
            else:
                reached.append(None)
    return reached


def conns(count: int, client_ip: str = "c1", dead: tuple = ()) -> list[tuple]:
    return [("conn", client_ip, dead)] * count


@pytest.mark.parametrize(
    "backends, script, expected",
    [
        pytest.param([A, B, C], conns(6), [A, B, C, A, B, C], id="rotates-in-order"),
        pytest.param([A], conns(3), [A, A, A], id="single-backend"),
        pytest.param([], conns(2), [None, None], id="no-backends"),
        pytest.param([A, B, C], conns(4, dead=(B,)), [A, C, A, C], id="dead-backend-skipped"),
        pytest.param([A, B, C], conns(4, dead=(A,)), [B, C, B, C], id="dead-first-backend-no-double-load"),
        pytest.param([A, B], conns(3, dead=(A, B)), [None, None, None], id="all-dead-fails"),
        pytest.param(
            [A, B, C],
            conns(2, dead=(B,)) + [("wait", 5)] + conns(3),
            [A, C, A, B, C],
            id="failed-backend-back-after-cooldown",
        ),
        pytest.param(
            [A, B, C],
            conns(2) + [("set", [A, B, C, D])] + conns(3),
            [A, B, C, D, A],
            id="added-backend-joins-rotation",
        ),
        pytest.param(
            [A, B, C],
            conns(1) + [("set", [A, C])] + conns(3),
            [A, A, C, A],
            id="removed-next-backend-restarts-rotation",
        ),
        pytest.param(
            [A, B, C],
            conns(1) + [("set", [B, C])] + conns(3),
            [A, B, C, B],
            id="removed-other-backend-keeps-position",
        ),
    ],
)
def test_round_robin(backends, script, expected):
    clock = FakeClock()
    balancer = RoundRobinBalancer(backends, failure_cooldown=2.0, clock=clock)
    assert run_script(balancer, clock, script) == expected


@pytest.mark.parametrize(
    "script, expected",
    [
        pytest.param(
            conns(3, "c1") + conns(2, "c2"),
            [A, A, A, B, B],
            id="each-client-pinned",
        ),
        pytest.param(
            conns(1, "c1") + conns(1, "c2") + conns(1, "c3") + conns(1, "c1") + conns(1, "c4"),
            [A, B, C, A, A],
            id="pinned-clients-do-not-consume-rotation",
        ),
        pytest.param(
            conns(1, "c1") + [("wait", 50)] + conns(1, "c2") + conns(1, "c1"),
            [A, B, A],
            id="use-within-timeout-keeps-pin",
        ),
        pytest.param(
            conns(1, "c1") + [("wait", 101)] + conns(1, "c2") + conns(1, "c1"),
            [A, B, C],
            id="pin-expires-after-idle-timeout",
        ),
        pytest.param(
            conns(1, "c1") + [("wait", 60)] + conns(1, "c1") + [("wait", 60)] + conns(1, "c1"),
            [A, A, A],
            id="each-use-renews-the-timeout",
        ),
        pytest.param(
            conns(1, "c1") + conns(2, "c1", dead=(A,)),
            [A, B, B],
            id="dead-pinned-backend-repins-client",
        ),
        pytest.param(
            conns(1, "c1") + [("set", [B, C])] + conns(2, "c1"),
            [A, B, B],
            id="removed-pinned-backend-repins-client",
        ),
    ],
)
def test_client_ip_affinity(script, expected):
    clock = FakeClock()
    balancer = RoundRobinBalancer([A, B, C], client_ip_affinity=True, affinity_timeout=100.0, clock=clock)
    assert run_script(balancer, clock, script) == expected


def test_affinity_off_spreads_one_client():
    balancer = RoundRobinBalancer([A, B], client_ip_affinity=False)
    assert run_script(balancer, FakeClock(), conns(4, "c1")) == [A, B, A, B]


def test_turning_affinity_off_forgets_pins():
    clock = FakeClock()
    balancer = RoundRobinBalancer([A, B], client_ip_affinity=True, clock=clock)
    run_script(balancer, clock, conns(1, "c1"))
    assert balancer.pinned("c1") == A
    balancer.set_affinity(False)
    assert balancer.pinned("c1") is None
    assert run_script(balancer, clock, conns(2, "c1")) == [B, A]


@pytest.mark.parametrize(
    "backends, cooling, expected_plan",
    [
        pytest.param([A, B, C], [], [A, B, C], id="all-healthy"),
        pytest.param([A, B, C], [A], [B, C, A], id="cooling-tried-last"),
        pytest.param([A, B, C], [A, B, C], [A, B, C], id="all-cooling-still-tried"),
    ],
)
def test_plan_always_offers_every_backend(backends, cooling, expected_plan):
    balancer = RoundRobinBalancer(backends, clock=FakeClock())
    for backend in cooling:
        balancer.failed(backend)
    assert balancer.plan("c1") == expected_plan


def test_set_backends_reports_change_and_drops_duplicates():
    balancer = RoundRobinBalancer([A, B])
    assert balancer.set_backends([A, B]) is False
    assert balancer.set_backends([A, B, B, C]) is True
    assert balancer.backends == [A, B, C]

"""Service IP and node port ranges, picking a free value, the taken view and the repair plan, without etcd."""

from __future__ import annotations

import asyncio
import ipaddress
import random

import pytest

from services.apiserver.ipallocator import (
    Claim,
    Holder,
    NodePortRange,
    RangeError,
    Release,
    ServiceIPRange,
    Span,
    TakenView,
    band_offset,
    ip_key,
    node_port_key,
    owner_record,
    pick,
    plan_repair,
)


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


# -- parsing the flags ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "first", "last", "band_start", "reserved"),
    [
        pytest.param("10.96.0.0/12", "10.96.0.1", "10.111.255.254", "10.96.1.1", "10.96.0.1", id="default"),
        pytest.param("10.0.0.0/24", "10.0.0.1", "10.0.0.254", "10.0.0.17", "10.0.0.1", id="slash-24-band-16"),
        pytest.param("10.0.0.0/29", "10.0.0.1", "10.0.0.6", "10.0.0.1", "10.0.0.1", id="tiny-no-band"),
        pytest.param("10.0.0.0/30", "10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.1", id="smallest-v4"),
        pytest.param("10.0.0.7/24", "10.0.0.1", "10.0.0.254", "10.0.0.17", "10.0.0.1", id="host-bits-dropped"),
        pytest.param("fd00::/108", "fd00::1", "fd00::f:ffff", "fd00::101", "fd00::1", id="v6-no-broadcast"),
        pytest.param("fd00::/126", "fd00::1", "fd00::3", "fd00::1", "fd00::1", id="smallest-v6"),
    ],
)
def test_service_ip_range(text: str, first: str, last: str, band_start: str, reserved: str) -> None:
    parsed = ServiceIPRange.parse(text)
    assert (parsed.span.first, parsed.span.last, parsed.span.band_start) == (ip(first), ip(last), ip(band_start))
    assert parsed.span.reserved == frozenset({ip(reserved)})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("nonsense", '--service-cluster-ip-range: "nonsense" is not a CIDR', id="not-a-cidr"),
        pytest.param("10.0.0.0/8", "10.0.0.0/8 is too large: the prefix must be /12 or longer", id="too-large"),
        pytest.param("fd00::/64", "fd00::/64 is too large: the prefix must be /108 or longer", id="v6-too-large"),
        pytest.param("10.0.0.0/31", "10.0.0.0/31 is too small: the prefix must be /30 or shorter", id="too-small"),
        pytest.param("10.0.0.1/32", "is too small", id="one-address"),
        pytest.param("fd00::/127", "fd00::/127 is too small: the prefix must be /126 or shorter", id="v6-too-small"),
    ],
)
def test_service_ip_range_refused(text: str, message: str) -> None:
    with pytest.raises(RangeError) as raised:
        ServiceIPRange.parse(text)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("text", "allowed"),
    [
        pytest.param("10.96.0.0", False, id="network"),
        pytest.param("10.96.0.1", True, id="kubernetes-service-may-be-asked-for"),
        pytest.param("10.100.3.4", True, id="inside"),
        pytest.param("10.111.255.255", False, id="broadcast"),
        pytest.param("10.112.0.1", False, id="after"),
        pytest.param("1.2.3.4", False, id="elsewhere"),
        pytest.param("fd00::1", False, id="other-family"),
        pytest.param("10.0.0", False, id="not-an-ip"),
    ],
)
def test_service_ip_range_allows(text: str, allowed: bool) -> None:
    assert ServiceIPRange.parse("10.96.0.0/12").allows(text) is allowed


def test_not_in_range_message_is_kubernetes_wording() -> None:
    assert ServiceIPRange.parse("10.96.0.0/12").not_in_range() == (
        "provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/12"
    )
    assert NodePortRange.parse("30000-32767").not_in_range() == (
        "provided port is not in the valid range. The range of valid ports is 30000-32767"
    )


@pytest.mark.parametrize(
    ("text", "first", "last", "band_start"),
    [
        pytest.param("30000-32767", 30000, 32767, 30086, id="default-band-86"),
        pytest.param(" 30000-30009 ", 30000, 30009, 30000, id="tiny-no-band"),
        pytest.param("1-65535", 1, 65535, 129, id="everything-band-capped-128"),
        pytest.param("31000", 31000, 31000, 31000, id="one-port"),
    ],
)
def test_node_port_range(text: str, first: int, last: int, band_start: int) -> None:
    span = NodePortRange.parse(text).span
    assert (span.first, span.last, span.band_start, span.reserved) == (first, last, band_start, frozenset())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("ports", '--service-node-port-range: "ports" is not a port range', id="words"),
        pytest.param("30000-", "is not a port range", id="open-ended"),
        pytest.param("32767-30000", "must be FIRST-LAST with 1 <= FIRST <= LAST <= 65535", id="reversed"),
        pytest.param("0-100", "must be FIRST-LAST", id="port-zero"),
        pytest.param("60000-70000", "must be FIRST-LAST", id="past-65535"),
    ],
)
def test_node_port_range_refused(text: str, message: str) -> None:
    with pytest.raises(RangeError) as raised:
        NodePortRange.parse(text)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("size", "minimum", "step", "maximum", "offset"),
    [
        pytest.param(8, 16, 16, 256, 0, id="below-minimum-none"),
        pytest.param(16, 16, 16, 256, 16, id="at-minimum"),
        pytest.param(256, 16, 16, 256, 16, id="slash-24"),
        pytest.param(1 << 20, 16, 16, 256, 256, id="capped"),
        pytest.param(2768, 16, 32, 128, 86, id="node-ports"),
    ],
)
def test_band_offset(size: int, minimum: int, step: int, maximum: int, offset: int) -> None:
    assert band_offset(size, minimum=minimum, step=step, maximum=maximum) == offset


# -- picking --------------------------------------------------------------------------

SPAN = Span(first=1, last=40, band_start=17, reserved=frozenset({1}))


@pytest.mark.parametrize(
    ("taken", "expected"),
    [
        pytest.param(set(), set(range(17, 41)), id="empty-upper-band"),
        pytest.param(set(range(17, 40)), {40}, id="one-left-upper"),
        pytest.param(set(range(17, 41)), set(range(2, 17)), id="upper-full-lower-band"),
        pytest.param(set(range(2, 41)), set(), id="full-reserved-never-picked"),
        pytest.param(set(range(2, 41)) - {9}, {9}, id="last-one-in-lower-band"),
    ],
)
def test_pick(taken: set[int], expected: set[int]) -> None:
    rng = random.Random(7)
    picks = {pick(SPAN, taken, rng) for _ in range(200)}
    wanted: set[int | None] = set(expected) or {None}
    assert picks == wanted


def test_pick_spreads_over_the_band() -> None:
    rng = random.Random(1)
    span = ServiceIPRange.parse("10.96.0.0/12").span
    picks = [pick(span, set(), rng) for _ in range(1000)]
    assert len(set(picks)) > 990  # random, not sequential
    assert all(value is not None and span.band_start <= value <= span.last for value in picks)


def test_pick_in_a_dense_range_finds_the_free_values() -> None:
    rng = random.Random(3)
    span = NodePortRange.parse("30000-32767").span
    free = {30001, 32000}
    taken = set(range(30000, 32768)) - free
    assert {pick(span, taken, rng) for _ in range(50)} == {32000}  # the upper band first
    taken.add(32000)
    assert pick(span, taken, rng) == 30001
    taken.add(30001)
    assert pick(span, taken, rng) is None


# -- keys and owners ------------------------------------------------------------------


def test_keys_are_canonical() -> None:
    assert ip_key("10.96.0.10") == "/registry/ipaddresses/10.96.0.10"
    assert ip_key("FD00:0:0::A") == "/registry/ipaddresses/fd00::a"
    assert ip_key("None") is None and ip_key("") is None
    assert node_port_key(30080) == "/registry/servicenodeports/30080"
    assert owner_record("default", "web", "u1") == (
        b'{"name":"web","namespace":"default","resource":"services","uid":"u1"}'
    )


# -- the taken view ----------------------------------------------------------------------


class FakeLoader:
    """What etcd holds under one prefix, and how many lists were made (each may be held up)."""

    def __init__(self, names: list[str], revision: int = 10) -> None:
        self.names = names
        self.revision = revision
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> tuple[int, list[str]]:
        self.calls += 1
        revision, names = self.revision, list(self.names)
        if self.gate is not None:
            await self.gate.wait()
        return revision, names


def port_value(text: str) -> int | None:
    return int(text) if text.isdigit() else None


async def test_view_lists_once_and_follows_own_commits() -> None:
    loader = FakeLoader(["30001", "30002", "junk"])
    view = TakenView(loader, port_value)
    await asyncio.gather(view.ready(), view.ready())
    assert loader.calls == 1 and set(view) == {30001, 30002}
    view.record(11, added=[30003], removed=[30001])
    assert set(view) == {30002, 30003} and 30001 not in view
    await view.ready()
    assert loader.calls == 1


async def test_view_reservations_count_until_released() -> None:
    view = TakenView(FakeLoader([]), port_value)
    await view.ready()
    view.reserve(30005)
    view.reserve(30005)
    view.unreserve(30005)
    assert 30005 in view and list(view) == [30005]
    view.unreserve(30005)
    assert 30005 not in view and list(view) == []


async def test_view_refresh_keeps_commits_newer_than_the_list() -> None:
    loader = FakeLoader(["30001"], revision=10)
    view = TakenView(loader, port_value)
    await view.ready()
    loader.names, loader.revision = ["30001", "30002", "30009"], 20
    loader.gate = asyncio.Event()
    refreshing = asyncio.ensure_future(view.refresh())
    for _ in range(3):
        await asyncio.sleep(0)  # the list is in flight, held at the gate
    view.record(19, added=[30007])  # before the list's revision: the list has the truth (it has no 30007)
    view.record(21, added=[30003], removed=[30009])  # after it: applied again on top
    joined = asyncio.ensure_future(view.refresh())  # joins the list in flight
    await asyncio.sleep(0)
    loader.gate.set()
    await asyncio.gather(refreshing, joined)
    assert loader.calls == 2
    assert set(view) == {30001, 30002, 30003}


async def test_view_saw_taken() -> None:
    view = TakenView(FakeLoader([]), port_value)
    await view.ready()
    view.saw_taken(30010)
    assert 30010 in view


async def test_failed_list_is_tried_again() -> None:
    calls = 0

    async def load() -> tuple[int, list[str]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("etcd down")
        return 5, ["30001"]

    view = TakenView(load, port_value)
    with pytest.raises(ConnectionError):
        await view.ready()
    await view.ready()
    assert set(view) == {30001} and calls == 2


# -- the repair plan -----------------------------------------------------------------------

A_OWNER, B_OWNER, GONE_OWNER = (owner_record("ns", n, f"uid-{n}") for n in ("a", "b", "gone"))
IP_A, IP_B = b"/registry/ipaddresses/10.96.0.10", b"/registry/ipaddresses/10.96.0.11"
PORT_A = b"/registry/servicenodeports/30080"


def holder(name: str, owner: bytes, *wants: bytes, revision: int = 5) -> Holder:
    return Holder(f"/registry/services/ns/{name}".encode(), revision, owner, f"ns/{name}", wants)


@pytest.mark.parametrize(
    ("holders", "keys", "claims", "releases", "problems"),
    [
        pytest.param(
            [holder("a", A_OWNER, IP_A, PORT_A)], {IP_A: (A_OWNER, 3), PORT_A: (A_OWNER, 3)}, [], [], 0,
            id="consistent",
        ),
        pytest.param(
            [holder("a", A_OWNER, IP_A, PORT_A)], {IP_A: (A_OWNER, 3)},
            [Claim(PORT_A, A_OWNER, b"/registry/services/ns/a", 5, 0)], [], 0,
            id="missing-key-claimed-for-its-service",
        ),
        pytest.param(
            [holder("a", A_OWNER, IP_A)], {IP_A: (A_OWNER, 3), IP_B: (GONE_OWNER, 4)},
            [], [Release(IP_B, 4)], 0,
            id="orphan-released",
        ),
        pytest.param(
            [holder("a", A_OWNER, IP_A)], {IP_A: (GONE_OWNER, 4)},
            [Claim(IP_A, A_OWNER, b"/registry/services/ns/a", 5, 4)], [], 0,
            id="key-of-a-gone-service-taken-over",
        ),
        pytest.param(
            [holder("a", A_OWNER, IP_A), holder("b", B_OWNER, IP_A)], {IP_A: (B_OWNER, 4)}, [], [], 1,
            id="shared-value-stays-with-its-holder-and-is-reported",
        ),
        pytest.param(
            [holder("a", A_OWNER, IP_A), holder("b", B_OWNER, IP_A)], {},
            [Claim(IP_A, A_OWNER, b"/registry/services/ns/a", 5, 0)], [], 1,
            id="shared-value-unclaimed-goes-to-the-first",
        ),
        pytest.param([], {PORT_A: (A_OWNER, 9)}, [], [Release(PORT_A, 9)], 0, id="no-services"),
    ],
)
def test_plan_repair(
    holders: list[Holder],
    keys: dict[bytes, tuple[bytes, int]],
    claims: list[Claim],
    releases: list[Release],
    problems: int,
) -> None:
    plan = plan_repair(holders, keys)
    assert list(plan.claims) == claims
    assert list(plan.releases) == releases
    assert len(plan.problems) == problems
    if problems:
        assert "10.96.0.10 is assigned to several services: ns/a, ns/b" in plan.problems[0]

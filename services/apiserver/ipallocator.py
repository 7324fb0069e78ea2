"""Service cluster IPs and node ports: the ranges, picking a free value, and what is taken.

The model is Kubernetes' newer one (KEP-1880, IPAddress objects): every
allocated value is a key of its own in etcd whose value names the owner,

    /registry/ipaddresses/<ip>            (canonical text: 10.96.0.10, fd00::a)
    /registry/servicenodeports/<port>

and the keys of a service are written in the SAME etcd transaction as the
service itself (strategies.py's ServiceAllocation, through the registry's
side-key hook): a create puts the service and its keys guarded by "each key
absent"; a delete removes them (each only while it still names the service); an
update puts and deletes the difference. So etcd's guard, not this server's
memory, is what makes a value belong to one service: concurrent creates on one
or several API servers cannot share a value, and an API server killed at any
point leaves either the service with its keys or neither; there is nothing to
repair after a crash. (Kubernetes' older design, one bitmap value per range
rewritten on every allocation, serialises every service write on one key and
leaks a value when the server dies between the bitmap and the service; its
repair loop exists for that. We keep a repair pass, `plan_repair`, run once at
start-up, for what atomic writes cannot prevent: services stored before keys
existed, or keys edited by hand.)

Picking is pure (`pick`): random among free values, offset-first as
Kubernetes' allocators (KEP-3070, KEP-3668): the range's lower band (16 to
256 IPs, 16 to 128 ports) is left for users who ask for a specific value, and
dynamic picks take it only when the upper band is full. The first IP after the
network address is reserved for the `kubernetes` service: never picked, though
it may be asked for by name. The network address, and for IPv4 the broadcast
address, are not in the range at all.

Picking reads a `TakenView`: this server's idea of what is taken, listed from
etcd at first use and kept current from its own commits, plus the values its
in-flight writes have picked (so concurrent creates on one server never pick
the same value). Other servers' writes are seen only on a re-list, done when a
claim loses its guard and before calling a range full: a stale view only costs
a retry, never a duplicate. (A watch of the prefixes would keep it fresher, at
the price of a stream and a task per server for changes that are rare and
cheap to learn from a lost guard; we list instead.)

Releases are nested transactions, "delete the key if it still names this
service", inside the service's own: a key that is not the service's (hand
edits, a value two legacy services share) is never freed by its delete, and
a missing key does not fail it.

Answers (strategies.py): a value asked for outside the range is
INVALID_ARGUMENT naming the field, in Kubernetes' words ("provided IP is not in
the valid range. The range of valid IPs is 10.96.0.0/12"); one that another
service holds is ALREADY_EXISTS ("provided IP is already allocated"), said by
etcd's guard, not by the view. A full range is RESOURCE_EXHAUSTED naming the
field and the range: the cluster ran out of something an operator can widen,
which is what that code means; Kubernetes answers 500 there, but INTERNAL here
means a bug of the server (logged with a traceback). Picks lost to other
servers 16 times in a row end in ABORTED (retry), as any other lost race.
spec.clusterIP is immutable; nodePorts may change on update (as in
Kubernetes), the old ones freed and the new ones claimed in the same
transaction; an update that leaves either empty keeps the stored value, so
`apply` of a manifest without them changes nothing.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import itertools
import json
import random
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

IP_PREFIX = "/registry/ipaddresses/"
NODE_PORT_PREFIX = "/registry/servicenodeports/"
DEFAULT_SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/12"
DEFAULT_SERVICE_NODE_PORT_RANGE = "30000-32767"

# Kubernetes' bitmap allocator's limit, kept: at most 2^20 addresses, so a full
# range's worst case (a scan of every value) stays well under a second.
MAX_RANGE_BITS = 20
# Random tries before a band is scanned from a random start (it is then dense).
_RANDOM_TRIES = 8


class RangeError(ValueError):
    """A range flag that cannot be used; the message names the flag and says why."""


# -- ranges ------------------------------------------------------------------------


def band_offset(size: int, *, minimum: int, step: int, maximum: int) -> int:
    """The size of the lower band reserved for static values (Kubernetes'
    calculateRangeOffset: min(max(minimum, size / step), maximum); none in a tiny range)."""
    if size < minimum:
        return 0
    return min(max(minimum, size // step), maximum)


@dataclass(frozen=True, slots=True)
class Span:
    """Allocatable integers first..last (inclusive); dynamic picks try
    band_start..last before first..band_start-1 and never pick a reserved value."""

    first: int
    last: int
    band_start: int
    reserved: frozenset[int] = frozenset()

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.first <= value <= self.last

    @property
    def size(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class ServiceIPRange:
    """--service-cluster-ip-range: the network, and its allocatable addresses as integers."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    span: Span

    @classmethod
    def parse(cls, text: str, flag: str = "--service-cluster-ip-range") -> ServiceIPRange:
        try:
            network = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise RangeError(f'{flag}: "{text}" is not a CIDR (e.g. {DEFAULT_SERVICE_CLUSTER_IP_RANGE})') from None
        host_bits = network.max_prefixlen - network.prefixlen
        if host_bits > MAX_RANGE_BITS:
            smallest = network.max_prefixlen - MAX_RANGE_BITS
            raise RangeError(f"{flag}: {network} is too large: the prefix must be /{smallest} or longer")
        base = int(network.network_address)
        last = int(network.broadcast_address) - (1 if network.version == 4 else 0)
        first = base + 1
        # The first address is the `kubernetes` service's; at least one more must be left to pick.
        if last - first < 1:
            longest = network.max_prefixlen - 2
            raise RangeError(f"{flag}: {network} is too small: the prefix must be /{longest} or shorter")
        offset = band_offset(network.num_addresses, minimum=16, step=16, maximum=256)
        return cls(network, Span(first, last, first + offset, frozenset({first})))

    def __str__(self) -> str:
        return str(self.network)

    def value(self, text: str) -> int | None:
        """text as an integer when it is an address of this range's family, else None."""
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return None
        return int(address) if address.version == self.network.version else None

    def text(self, value: int) -> str:
        return str(ipaddress.IPv4Address(value) if self.network.version == 4 else ipaddress.IPv6Address(value))

    def allows(self, text: str) -> bool:
        """Whether text is an address a service may have (the network and broadcast addresses are not)."""
        return self.value(text) in self.span

    def not_in_range(self) -> str:
        return f"provided IP is not in the valid range. The range of valid IPs is {self.network}"


@dataclass(frozen=True, slots=True)
class NodePortRange:
    """--service-node-port-range: "30000-32767" (inclusive), or one port."""

    span: Span

    @classmethod
    def parse(cls, text: str, flag: str = "--service-node-port-range") -> NodePortRange:
        low_text, dash, high_text = text.strip().partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if dash else low
        except ValueError:
            raise RangeError(
                f'{flag}: "{text}" is not a port range (e.g. {DEFAULT_SERVICE_NODE_PORT_RANGE})'
            ) from None
        if not 1 <= low <= high <= 65535:
            raise RangeError(f'{flag}: "{text}" must be FIRST-LAST with 1 <= FIRST <= LAST <= 65535')
        offset = band_offset(high - low + 1, minimum=16, step=32, maximum=128)
        return cls(Span(low, high, low + offset))

    def __str__(self) -> str:
        return f"{self.span.first}-{self.span.last}"

    def allows(self, port: int) -> bool:
        return port in self.span

    def not_in_range(self) -> str:
        return f"provided port is not in the valid range. The range of valid ports is {self}"


# -- picking -------------------------------------------------------------------------


class Taken(Protocol):
    def __contains__(self, value: object, /) -> bool: ...

    def __iter__(self) -> Iterator[int]: ...


def pick(span: Span, taken: Taken, rng: random.Random) -> int | None:
    """A free value of span, upper band first; None when every one is taken or reserved."""
    reserved = span.reserved

    def free(value: int) -> bool:
        return value not in taken and value not in reserved

    for low, high in ((span.band_start, span.last), (span.first, span.band_start - 1)):
        if low > high:
            continue
        for _ in range(_RANDOM_TRIES):
            value = rng.randint(low, high)
            if free(value):
                return value
        # Mostly taken: count first, so that a full band costs a pass over what is taken.
        used = sum(1 for value in set(taken) if low <= value <= high)
        used += sum(1 for value in reserved if low <= value <= high and value not in taken)
        if used >= high - low + 1:
            continue
        start = rng.randint(low, high)
        for value in itertools.chain(range(start, high + 1), range(low, start)):
            if free(value):
                return value
    return None


# -- keys and owners -------------------------------------------------------------------


def ip_key(text: str) -> str | None:
    """The allocation key of an address (its canonical text), or None when text is not an address."""
    try:
        return IP_PREFIX + str(ipaddress.ip_address(text))
    except ValueError:
        return None


def node_port_key(port: int) -> str:
    return f"{NODE_PORT_PREFIX}{port}"


def owner_record(namespace: str, name: str, uid: str) -> bytes:
    """What an allocation key holds: the owning service (compared byte for byte on release)."""
    return json.dumps(
        {"resource": "services", "namespace": namespace, "name": name, "uid": uid},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


# -- what this server knows is taken --------------------------------------------------

# Loads what is under one prefix: (the revision it was read at, the names after the prefix).
Loader = Callable[[], Awaitable[tuple[int, list[str]]]]


class TakenView:
    """Values taken under one allocation prefix, as this server knows them, plus
    the values its in-flight writes have picked or asked for (see the module docstring).

    Listed at first use (`ready`), re-listed on `refresh` (callers sharing one list
    in flight), and kept current from this server's commits (`record`); a commit
    that lands while a list is in flight is applied again on top of the list
    when it is newer than the list's revision.
    """

    def __init__(self, load: Loader, parse: Callable[[str], int | None]) -> None:
        self._load = load
        self._parse = parse
        self._listed: set[int] = set()
        self._reserved: collections.Counter[int] = collections.Counter()
        self._loaded = False
        self._listing: asyncio.Future[None] | None = None
        self._since_list: list[tuple[int, int, bool]] | None = None
        self.lists = 0  # how many times it was listed (for tests and logs)

    def __contains__(self, value: object) -> bool:
        return value in self._listed or self._reserved[value] > 0  # type: ignore[index]

    def __iter__(self) -> Iterator[int]:
        return itertools.chain(self._listed, (v for v in self._reserved if v not in self._listed))

    async def ready(self) -> None:
        """Lists once, at first use."""
        if not self._loaded:
            await self.refresh()

    async def refresh(self) -> None:
        """Lists again (joining a list already in flight)."""
        if self._listing is None:
            self._since_list = []
            self._listing = asyncio.ensure_future(self._list())
        await asyncio.shield(self._listing)

    async def _list(self) -> None:
        since = self._since_list if self._since_list is not None else []  # record() appends to it meanwhile
        try:
            revision, names = await self._load()
            listed = {value for name in names if (value := self._parse(name)) is not None}
            for changed_at, value, added in since:
                if changed_at > revision:
                    (listed.add if added else listed.discard)(value)
            self._listed = listed
            self._loaded = True
            self.lists += 1
        finally:
            self._since_list = None
            self._listing = None

    def reserve(self, value: int) -> None:
        self._reserved[value] += 1

    def unreserve(self, value: int) -> None:
        self._reserved[value] -= 1
        if self._reserved[value] <= 0:
            del self._reserved[value]

    def record(self, revision: int, added: Iterable[int] = (), removed: Iterable[int] = ()) -> None:
        """This server committed these changes at revision."""
        for value, was_added in itertools.chain(((v, True) for v in added), ((v, False) for v in removed)):
            (self._listed.add if was_added else self._listed.discard)(value)
            if self._since_list is not None:
                self._since_list.append((revision, value, was_added))

    def saw_taken(self, value: int) -> None:
        """etcd said value is taken (a claim lost its guard)."""
        self._listed.add(value)


# -- the start-up repair -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Holder:
    """A service as the repair sees it: its key, revision, owner record and the keys it should hold."""

    key: bytes
    revision: int
    owner: bytes
    name: str  # namespace/name
    wants: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Claim:
    """Create (or take over) an allocation key for a service still at its revision."""

    key: bytes
    owner: bytes
    service_key: bytes
    service_revision: int
    expected_mod_revision: int  # 0: the key must be absent


@dataclass(frozen=True, slots=True)
class Release:
    """Delete an allocation key nobody holds, if nobody changed it since."""

    key: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class RepairPlan:
    claims: tuple[Claim, ...]
    releases: tuple[Release, ...]
    problems: tuple[str, ...]  # what a person has to resolve (logged)


def plan_repair(holders: Sequence[Holder], keys: Mapping[bytes, tuple[bytes, int]]) -> RepairPlan:
    """What makes the allocation keys match the services, all read at one revision.

    keys: every allocation key present, with (value, mod_revision). A key held
    by nobody is released; a key a service should hold but that is absent, or
    names a service that no longer exists, is claimed for it; a value that two
    services have is left with the one whose key names it (else the first) and
    reported, as Kubernetes' repair loop does ("please recreate"). A claim over
    a present key is guarded by its mod_revision, so nothing written since the
    read is undone.
    """
    claims: list[Claim] = []
    problems: list[str] = []
    wanted: dict[bytes, list[Holder]] = {}
    for holder in holders:
        for key in holder.wants:
            wanted.setdefault(key, []).append(holder)
    for key, wanting in wanted.items():
        present = keys.get(key)
        chosen = next((h for h in wanting if present is not None and present[0] == h.owner), None)
        if len(wanting) > 1:
            problems.append(
                f"{key.decode()} is assigned to several services: {', '.join(h.name for h in wanting)}; "
                "recreate all but one of them"
            )
        if chosen is not None:
            continue
        holder = wanting[0]
        claims.append(Claim(key, holder.owner, holder.key, holder.revision, present[1] if present else 0))
    releases = tuple(
        Release(key, mod_revision) for key, (_, mod_revision) in sorted(keys.items()) if key not in wanted
    )
    return RepairPlan(tuple(claims), releases, tuple(problems))

"""What the kernel data paths have in common, pure: a service's share of the rules, and the diff.

Both kernel modes (`nftables.py`, `iptables.py`) turn each Service and its
Endpoints into a `Rules`: chains of the service's own (names no other service
uses), sets (nftables only), and elements it adds to the fixed skeleton's
shared containers (an nftables map or set; an iptables chain of the skeleton,
where an "element" is one rule: key = its match, value = its target). `Installed`
holds what the last successful transaction left, per service, and plans the
next one: the changed services' difference (`plan`) or the whole ruleset
(`plan_full`). Writing the commands is the mode's own `Writer`; the bookkeeping
here (which service holds which element, conflicts, commit only on success) is
the same for both, and tested through each mode's tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol

ServiceKey = tuple[str, str]  # (namespace, name)
ElementKey = tuple[str, str]  # (container, element key text)


@dataclass(frozen=True)
class ProgrammedPort:
    """One service port as the rules serve it (for status and logs)."""

    namespace: str
    service: str
    port_name: str
    protocol: str
    cluster_ip: str
    port: int
    node_port: int
    endpoints: tuple[tuple[str, int], ...]
    affinity: bool

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.namespace, self.service, self.port_name)


@dataclass(frozen=True)
class Rules:
    """A share of the rules: chains (name -> rules), sets (name -> (kind, declaration)),
    and elements of the skeleton's containers ((container, key) -> value; "" in a set)."""

    chains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sets: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    elements: Mapping[ElementKey, str] = field(default_factory=dict)
    ports: tuple[ProgrammedPort, ...] = ()
    skipped: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.chains or self.sets or self.elements)


EMPTY = Rules()


def merge(parts: Iterable[Rules]) -> Rules:
    """One Rules holding several services' shares (their names never overlap)."""
    chains: dict[str, tuple[str, ...]] = {}
    sets: dict[str, tuple[str, str]] = {}
    elements: dict[ElementKey, str] = {}
    for part in parts:
        chains.update(part.chains)
        sets.update(part.sets)
        elements.update(part.elements)
    return Rules(chains=chains, sets=sets, elements=elements)


def script(commands: list[str]) -> str:
    return "".join(command + "\n" for command in commands)


class Writer(Protocol):
    """A mode's command writer: the text of one transaction."""

    def diff(self, old: Rules, new: Rules) -> list[str]:
        """The commands that turn `old` into `new` (both: the changed services' shares)."""

    def full(self, rules: Rules, present: Any = None) -> list[str]:
        """The commands that replace everything with the skeleton and `rules`; `present` is
        what the mode read of the kernel beforehand, if it needs to (iptables does)."""


@dataclass
class Plan:
    """One transaction: its commands, and the state to record once it succeeded."""

    commands: list[str]
    full: bool
    after: dict[ServiceKey, Rules]  # the changed services' new shares (EMPTY: gone)
    conflicts: dict[ServiceKey, tuple[str, ...]]
    released: bool  # some element was given up: services blocked on one may now get it

    @property
    def script(self) -> str:
        return script(self.commands)


class Installed:
    """What the last successful transaction left, per service (pure bookkeeping)."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.by_service: dict[ServiceKey, Rules] = {}
        self.owners: dict[ElementKey, ServiceKey] = {}
        self.conflicts: dict[ServiceKey, tuple[str, ...]] = {}
        self.adopted = False  # a full transaction succeeded since start

    def _claim(
        self, key: ServiceKey, rules: Rules, owners: dict[ElementKey, ServiceKey]
    ) -> tuple[Rules, tuple[str, ...]]:
        """Drops the elements another service already holds; records this one's claims."""
        taken = [element for element in rules.elements if owners.get(element, key) != key]
        for element in rules.elements:
            owners.setdefault(element, key)
        if not taken:
            return rules, ()
        elements = {element: value for element, value in rules.elements.items() if element not in taken}
        reasons = tuple(
            f"{element[0]} {element[1]} is held by service {'/'.join(owners[element])}" for element in sorted(taken)
        )
        return Rules(rules.chains, rules.sets, elements, rules.ports, rules.skipped), reasons

    def plan(self, changed: Mapping[ServiceKey, Rules]) -> Plan:
        """The incremental transaction for these services' new shares (EMPTY for a deleted service)."""
        owners = dict(self.owners)
        released = False
        for key in changed:
            for element in self.by_service.get(key, EMPTY).elements:
                if owners.get(element) == key:
                    del owners[element]
        after: dict[ServiceKey, Rules] = {}
        conflicts: dict[ServiceKey, tuple[str, ...]] = {}
        for key in sorted(changed):
            claimed, reasons = self._claim(key, changed[key], owners)
            after[key] = claimed
            if reasons:
                conflicts[key] = reasons
            old_elements = self.by_service.get(key, EMPTY).elements
            if any(element not in claimed.elements for element in old_elements):
                released = True
        old = merge(self.by_service.get(key, EMPTY) for key in after)
        commands = self.writer.diff(old, merge(after.values()))
        return Plan(commands=commands, full=False, after=after, conflicts=conflicts, released=released)

    def plan_full(self, desired: Mapping[ServiceKey, Rules], present: Any = None) -> Plan:
        """The transaction that rebuilds everything for every service's share."""
        owners: dict[ElementKey, ServiceKey] = {}
        after: dict[ServiceKey, Rules] = {}
        conflicts: dict[ServiceKey, tuple[str, ...]] = {}
        for key in sorted(desired):
            claimed, reasons = self._claim(key, desired[key], owners)
            after[key] = claimed
            if reasons:
                conflicts[key] = reasons
        for key in self.by_service:
            after.setdefault(key, EMPTY)
        commands = self.writer.full(merge(after.values()), present)
        return Plan(commands=commands, full=True, after=after, conflicts=conflicts, released=True)

    def commit(self, plan: Plan) -> None:
        """Records a plan whose transaction succeeded."""
        if plan.full:
            self.by_service.clear()
            self.owners.clear()
            self.conflicts.clear()
            self.adopted = True
        for key, rules in plan.after.items():
            for element in self.by_service.get(key, EMPTY).elements:
                if self.owners.get(element) == key:
                    del self.owners[element]
            if rules.empty and not rules.ports and not rules.skipped:
                self.by_service.pop(key, None)
            else:
                self.by_service[key] = rules
            self.conflicts.pop(key, None)
        for key, rules in plan.after.items():
            for element in rules.elements:
                self.owners[element] = key
        self.conflicts.update(plan.conflicts)

    def blocked(self) -> set[ServiceKey]:
        """Services missing an element another service holds."""
        return set(self.conflicts)

    def counts(self) -> tuple[int, int, int]:
        """(services, service ports, endpoints) the rules serve."""
        services = ports = endpoints = 0
        for rules in self.by_service.values():
            if rules.ports:
                services += 1
            ports += len(rules.ports)
            endpoints += sum(len(port.endpoints) for port in rules.ports)
        return services, ports, endpoints

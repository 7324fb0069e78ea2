"""Round robin over a service port's backends, with ClientIP affinity and skip of failed ones.

Pure logic (no sockets, injectable clock) so that it is tested with tables. A
forwarder asks `plan(client_ip)` for the order in which to try backends, then
reports the outcome with `succeeded` or `failed`.

- Rotation: each new connection starts one step after the backend the previous
  connection ended up on, so a dead backend does not make its successor take
  double load.
- A backend whose connect failed is tried last for `failure_cooldown` seconds
  (then it is back in rotation): a refusing or black-holed pod costs one failed
  attempt per cooldown, not one per connection. When every backend is cooling
  they are all still tried, in rotation order: bookkeeping never refuses a client.
- ClientIP affinity (as Kubernetes' `sessionAffinity: ClientIP`): a client IP is
  pinned to the backend it last connected to until it has been idle for
  `affinity_timeout` seconds (Kubernetes' default: 3 hours), or the backend leaves
  the set or fails.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

Backend = tuple[str, int]  # (ip, port)

DEFAULT_AFFINITY_TIMEOUT = 3 * 60 * 60.0
DEFAULT_FAILURE_COOLDOWN = 2.0
# Expired affinity entries are swept after this many plans, so memory stays
# bounded by the clients seen within one timeout.
_AFFINITY_SWEEP_EVERY = 4096


@dataclass
class _Affinity:
    backend: Backend
    last_used: float


class RoundRobinBalancer:
    def __init__(
        self,
        backends: Iterable[Backend] = (),
        *,
        client_ip_affinity: bool = False,
        affinity_timeout: float = DEFAULT_AFFINITY_TIMEOUT,
        failure_cooldown: float = DEFAULT_FAILURE_COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client_ip_affinity = client_ip_affinity
        self.affinity_timeout = affinity_timeout
        self.failure_cooldown = failure_cooldown
        self._clock = clock
        self._backends: list[Backend] = []
        self._position: dict[Backend, int] = {}
        self._cursor = 0
        self._cooling_until: dict[Backend, float] = {}
        self._affinity: dict[str, _Affinity] = {}
        self._plans_since_sweep = 0
        self.set_backends(backends)

    @property
    def backends(self) -> list[Backend]:
        return list(self._backends)

    def set_backends(self, backends: Iterable[Backend]) -> bool:
        """Replaces the set (order kept, duplicates dropped); returns whether it changed.

        The rotation continues from the backend it would have used next when that
        one is still there, so an unrelated endpoint change does not send the next
        connections back to the first backend.
        """
        new = list(dict.fromkeys(backends))
        if new == self._backends:
            return False
        upcoming = self._backends[self._cursor % len(self._backends)] if self._backends else None
        self._backends = new
        self._position = {backend: index for index, backend in enumerate(new)}
        self._cursor = self._position.get(upcoming, 0) if upcoming is not None else 0
        self._cooling_until = {b: t for b, t in self._cooling_until.items() if b in self._position}
        self._affinity = {ip: a for ip, a in self._affinity.items() if a.backend in self._position}
        return True

    def set_affinity(self, client_ip_affinity: bool, affinity_timeout: float | None = None) -> None:
        self.client_ip_affinity = client_ip_affinity
        if affinity_timeout is not None:
            self.affinity_timeout = affinity_timeout
        if not client_ip_affinity:
            self._affinity.clear()

    def plan(self, client_ip: str = "") -> list[Backend]:
        """Every backend, in the order a new connection from client_ip should try them."""
        backends = self._backends
        count = len(backends)
        if count == 0:
            return []
        start = self._cursor % count
        self._cursor = start + 1
        order = backends[start:] + backends[:start] if start else list(backends)
        if self._cooling_until:
            now = self._clock()
            self._cooling_until = {b: t for b, t in self._cooling_until.items() if t > now}
            if self._cooling_until:
                # Stable partition: healthy ones in rotation order, then the cooling ones.
                order = [b for b in order if b not in self._cooling_until] + [
                    b for b in order if b in self._cooling_until
                ]
                # Start the rotation after the first healthy one, not after a cooling one.
                self._cursor = self._position[order[0]] + 1
        if self.client_ip_affinity and client_ip:
            pinned = self._pinned(client_ip)
            if pinned is not None and pinned not in self._cooling_until:
                order.remove(pinned)
                order.insert(0, pinned)
                # A pinned connection does not consume a turn of the rotation.
                self._cursor = start
        return order

    def succeeded(self, client_ip: str, backend: Backend) -> None:
        """The connection reached backend: pin the client (affinity) and rotate past it."""
        self._cooling_until.pop(backend, None)
        position = self._position.get(backend)
        if position is None:  # the set changed while connecting
            return
        if self.client_ip_affinity and client_ip:
            pinned = self._affinity.get(client_ip)
            if pinned is not None and pinned.backend == backend:
                pinned.last_used = self._clock()
                return
            self._affinity[client_ip] = _Affinity(backend, self._clock())
        self._cursor = position + 1

    def failed(self, backend: Backend) -> None:
        """Connecting to backend failed: try it last for a while, and unpin its clients."""
        if backend not in self._position:
            return
        self._cooling_until[backend] = self._clock() + self.failure_cooldown
        if self._affinity:
            self._affinity = {ip: a for ip, a in self._affinity.items() if a.backend != backend}

    def pinned(self, client_ip: str) -> Backend | None:
        """The backend client_ip is pinned to, if affinity holds one that has not expired."""
        return self._pinned(client_ip) if self.client_ip_affinity else None

    def _pinned(self, client_ip: str) -> Backend | None:
        self._plans_since_sweep += 1
        if self._plans_since_sweep >= _AFFINITY_SWEEP_EVERY:
            self._sweep_affinity()
        entry = self._affinity.get(client_ip)
        if entry is None:
            return None
        if self._clock() - entry.last_used > self.affinity_timeout:
            del self._affinity[client_ip]
            return None
        return entry.backend

    def _sweep_affinity(self) -> None:
        self._plans_since_sweep = 0
        now = self._clock()
        self._affinity = {
            ip: a for ip, a in self._affinity.items() if now - a.last_used <= self.affinity_timeout
        }

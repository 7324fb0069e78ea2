"""Per service port counters, read by the Status RPC."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class PortCounters:
    # TCP: accepted client connections; UDP: client sessions (one per client address).
    connections_total: int = 0
    connections_active: int = 0
    # Attempts to reach a backend that failed (refused, timed out, unreachable).
    connect_failures: int = 0
    # Bytes from clients to backends, and back.
    bytes_in: int = 0
    bytes_out: int = 0

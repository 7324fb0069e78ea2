"""Command-line value types every component uses, so flags read alike everywhere.

Durations take Kubernetes' forms ("20s", "1.5m", "500ms") or plain seconds.
"""

from __future__ import annotations

import argparse
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration(text: str) -> float:
    """Seconds from "20s", "1.5m", "500ms" or a plain number of seconds (zero allowed)."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f'invalid duration "{text}": use e.g. 20s, 500ms, 1m or a number of seconds')
    return float(match.group(1)) * _UNITS[match.group(2)]


def positive_duration(text: str) -> float:
    """A duration greater than zero."""
    value = duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f'must be greater than 0, not "{text}"')
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'"{text}" is not an integer') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be at least 1, not "{text}"')
    return value


def boolean(text: str) -> bool:
    """Kubernetes' boolean flag values: `--flag`, `--flag=true`, `--flag=false` (with nargs="?", const=True)."""
    value = text.strip().lower()
    if value in ("true", "1", "t", "yes"):
        return True
    if value in ("false", "0", "f", "no"):
        return False
    raise argparse.ArgumentTypeError(f'"{text}" is not true or false')


def add_api_client_flags(parser: argparse.ArgumentParser) -> None:
    """--server and --kubeconfig, as every client component of the API server spells them."""
    parser.add_argument(
        "--server", default=None, metavar="HOST:PORT",
        help="API server address, overriding the kubeconfig's (default $KYBERNETES_SERVER, else 127.0.0.1:6443)",
    )
    parser.add_argument(
        "--kubeconfig", default=None, metavar="FILE",
        help="kubeconfig with the API server, its CA and this client's credentials "
        "(default $KYBERNETES_CONFIG, else ~/.kybernetes/config)",
    )

"""Kubernetes resource quantities ("500m", "2", "64Mi", "1G", "129e6").

The grammar is Kubernetes' `resource.Quantity`:

    quantity ::= [+-] number suffix
    number   ::= digits | digits "." digits? | "." digits
    suffix   ::= "" | binary (Ki Mi Gi Ti Pi Ei) | decimal (n u m k M G T P E)
               | ("e" | "E") [+-] digits

Values are exact (Fraction); converting to whole units rounds up, as
Kubernetes' `Value()` and `MilliValue()` do, so a request is never understated.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction


class QuantityError(ValueError):
    """A string that is not a Kubernetes quantity, or one out of range for its use."""


_BINARY_SUFFIXES: dict[str, int] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
_DECIMAL_SUFFIXES: dict[str, Fraction] = {
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 10**3), "": Fraction(1),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
    "P": Fraction(10**15), "E": Fraction(10**18),
}
_QUANTITY_RE = re.compile(
    r"(?P<sign>[+-]?)(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<exponent>[eE][+-]?[0-9]+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)"
)
# Far beyond any real quantity; bounds the work a hostile "1e999999999" could cause.
_MAX_EXPONENT = 100
_MAX_LENGTH = 100
_SYNTAX = (
    "quantities must match the regular expression "
    "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$' (e.g. '500m', '2', '64Mi', '1G')"
)


def parse_quantity(text: str) -> Fraction:
    """The exact value of a quantity; raises QuantityError on anything else."""
    if not isinstance(text, str) or len(text) > _MAX_LENGTH:
        raise QuantityError(f"invalid quantity {text!r}: {_SYNTAX}")
    match = _QUANTITY_RE.fullmatch(text)
    if match is None:
        raise QuantityError(f"invalid quantity {text!r}: {_SYNTAX}")
    value = Fraction(match["number"])
    if match["exponent"]:
        exponent = int(match["exponent"][1:])
        if abs(exponent) > _MAX_EXPONENT:
            raise QuantityError(f"invalid quantity {text!r}: exponent out of range")
        value *= Fraction(10) ** exponent
    else:
        suffix = match["suffix"] or ""
        value *= _BINARY_SUFFIXES[suffix] if suffix in _BINARY_SUFFIXES else _DECIMAL_SUFFIXES[suffix]
    return -value if match["sign"] == "-" else value


def _non_negative(text: str, what: str) -> Fraction:
    value = parse_quantity(text)
    if value < 0:
        raise QuantityError(f"invalid {what} quantity {text!r}: must be greater than or equal to 0")
    return value


def parse_cpu_millis(text: str) -> int:
    """CPU in millicores: "500m" → 500, "2" → 2000, "0.5" → 500 (fractions of a millicore round up)."""
    return math.ceil(_non_negative(text, "cpu") * 1000)


def parse_memory_bytes(text: str) -> int:
    """Memory in bytes: "64Mi" → 67108864, "1G" → 10**9, "129e6" → 129000000 (rounded up)."""
    return math.ceil(_non_negative(text, "memory"))


def format_cpu_millis(millis: int) -> str:
    """Whole cores when exact ("2"), else millicores ("1500m")."""
    if millis % 1000 == 0:
        return str(millis // 1000)
    return f"{millis}m"


def format_memory_bytes(size: int) -> str:
    """The largest exact binary suffix ("24Gi"), else decimal ("1500M"), else plain bytes."""
    if size == 0:
        return "0"
    for suffix, factor in sorted(_BINARY_SUFFIXES.items(), key=lambda item: -item[1]):
        if size % factor == 0:
            return f"{size // factor}{suffix}"
    for suffix in ("E", "P", "T", "G", "M", "k"):
        factor = int(_DECIMAL_SUFFIXES[suffix])
        if size % factor == 0:
            return f"{size // factor}{suffix}"
    return str(size)

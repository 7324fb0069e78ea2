"""The API server's errors: a gRPC status and a message naming the object or field."""

from __future__ import annotations

import grpc

from services.common.validation import show_value


# gRPC sends the status message in a trailer (grpc-message), percent-encoding every byte
# outside printable ASCII (and "%") as three. A peer refuses trailers over its metadata
# limit: always over 16 KiB, and at random between its soft limit (8 KiB) and that; the
# client then sees RESOURCE_EXHAUSTED "Stream removed" instead of the error. Every message
# is capped here by its size as sent, so that it fits under the soft limit with room for
# the other trailers: 4,000 characters of ASCII, a third of that where every byte is
# escaped (a 4 KiB name of "é" once made a 12 KiB trailer; issue 14, D5).
MAX_MESSAGE_BYTES = 4000

# The bytes gRPC sends as they are in a grpc-message (its "compatible" percent-encoding).
_UNESCAPED = bytes(b for b in range(0x20, 0x7F) if b != 0x25)


def wire_size(text: str) -> int:
    """How many bytes text takes in a grpc-message trailer."""
    data = text.encode()
    return len(data) + 2 * len(data.translate(None, _UNESCAPED))


def cap_message(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """message, cut to at most `limit` bytes as sent in a trailer (saying how much was cut)."""
    # Every character takes a byte at least: look no further than `limit` of them.
    if len(message) <= limit and wire_size(message) <= limit:
        return message
    budget = limit - 64  # room for the note below
    kept = 0
    for char in message[:budget]:
        budget -= wire_size(char)
        if budget < 0:
            break
        kept += 1
    return f"{message[:kept]}…({len(message) - kept} more characters)"


class ApiError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        message = cap_message(message)
        super().__init__(message)
        self.code = code
        self.message = message


def not_found(kind_plural: str, namespace: str, name: str) -> ApiError:
    where = f" in namespace {namespace}" if namespace else ""
    return ApiError(grpc.StatusCode.NOT_FOUND, f"{kind_plural} {show_value(name)} not found{where}")


def already_exists(kind_plural: str, namespace: str, name: str) -> ApiError:
    where = f" in namespace {namespace}" if namespace else ""
    return ApiError(grpc.StatusCode.ALREADY_EXISTS, f"{kind_plural} {show_value(name)} already exists{where}")


def conflict(kind_plural: str, name: str, expected: int, actual: int) -> ApiError:
    return ApiError(
        grpc.StatusCode.ABORTED,
        f"operation on {kind_plural} {show_value(name)} cannot be fulfilled: metadata.resourceVersion {expected} "
        f"is stale (stored: {actual}); read the latest version and try again",
    )


def invalid(
    kind_name: str, name: str, errors: list, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
) -> ApiError:
    """Field errors of one object. The code says which kind of problem: INVALID_ARGUMENT
    for bad input, ALREADY_EXISTS for a requested value another object holds (a
    cluster IP), RESOURCE_EXHAUSTED for a range with nothing left to allocate."""
    return ApiError(code, listed_message(f"{kind_name} {show_value(name)} is invalid: ", errors, "errors"))


def listed_message(head: str, problems: list, noun: str) -> str:
    """head, then as many problems ("; "-separated) as fit a gRPC status trailer, and
    "; and N more <noun>" for the rest: a message always arrives whole."""
    budget = MAX_MESSAGE_BYTES - wire_size(head) - 40  # room for "; and N more ..."
    shown: list[str] = []
    for problem in problems:
        text = str(problem)
        size = wire_size(text) + 2
        if shown and size > budget:
            break
        shown.append(text)
        budget -= size
    details = "; ".join(shown)
    if len(shown) < len(problems):
        details += f"; and {len(problems) - len(shown)} more {noun}"
    return head + details


def require_name(name: str) -> None:
    """A request that names one object must name it."""
    if not name:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "name: required")

"""The API server's errors: a gRPC status and a message naming the object or field."""

from __future__ import annotations

import grpc

from services.common.validation import show_value


# gRPC sends the status message in a trailer (grpc-message, percent-encoded), and a
# peer refuses trailers over its metadata limit (16 KiB by default): the client then
# sees RESOURCE_EXHAUSTED "Stream removed" instead of the error. Every message is
# capped here, in UTF-8 bytes, so that even fully percent-encoded (3 bytes per
# byte) it fits with room for the other headers.
MAX_MESSAGE_BYTES = 4000


def cap_message(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """message, cut to at most `limit` UTF-8 bytes (saying how much was cut)."""
    data = message.encode()
    if len(data) <= limit:
        return message
    kept = data[: limit - 64].decode(errors="ignore")
    return f"{kept}…({len(message) - len(kept)} more characters)"


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
    budget = MAX_MESSAGE_BYTES - len(head.encode()) - 40  # room for "; and N more ..."
    shown: list[str] = []
    for problem in problems:
        text = str(problem)
        size = len(text.encode()) + 2
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

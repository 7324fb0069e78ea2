"""gRPC errors as the one-line messages kubectl prints."""

from __future__ import annotations

import grpc

from services.common.resources import Kind

# kubectl names a failed request by the Kubernetes status reason.
REASONS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.ABORTED: "Conflict",
    grpc.StatusCode.INVALID_ARGUMENT: "Invalid",
    grpc.StatusCode.FAILED_PRECONDITION: "BadRequest",
    grpc.StatusCode.OUT_OF_RANGE: "Expired",
    grpc.StatusCode.PERMISSION_DENIED: "Forbidden",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthorized",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "TooManyRequests",
    grpc.StatusCode.UNIMPLEMENTED: "MethodNotAllowed",
    grpc.StatusCode.DEADLINE_EXCEEDED: "Timeout",
    grpc.StatusCode.INTERNAL: "InternalError",
    grpc.StatusCode.UNKNOWN: "InternalError",
    grpc.StatusCode.CANCELLED: "Cancelled",
}
# Codes that mean the server as a whole is out of reach: the command stops.
CONNECTION_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class CommandError(Exception):
    """An expected failure: its message is printed on stderr as is, exit code 1."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _short_reason(details: str) -> str:
    lowered = details.lower()
    if "connection refused" in lowered:
        return "connection refused"
    if "deadline" in lowered:
        return "no answer in time"
    if "name resolution" in lowered or "dns resolution" in lowered:
        return "the host name does not resolve"
    return details or "unavailable"


def unreachable(error: grpc.aio.AioRpcError, what: str, address: str) -> CommandError:
    """`error: cannot reach the API server at 127.0.0.1:6443: connection refused`; when the server
    answered and it is its storage that is out of reach, kubectl's line for a 503."""
    details = error.details() or ""
    if error.code() == grpc.StatusCode.UNAVAILABLE and details.startswith("etcd"):
        return CommandError(f"Error from server (ServiceUnavailable): {details}")
    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CommandError(f"error: {what} at {address} did not answer in time")
    return CommandError(f"error: cannot reach {what} at {address}: {_short_reason(details)}")


def server_error(
    error: grpc.aio.AioRpcError,
    kind: Kind | None = None,
    name: str = "",
    *,
    action: str = "",
    origin: str = "",
) -> str:
    """The kubectl-style line for a failed request about one object.

    action and origin add kubectl's context: `error when creating "pod.yaml": ...`.
    """
    code = error.code()
    details = error.details() or code.name.lower().replace("_", " ")
    reason = REASONS.get(code, code.name.title().replace("_", ""))
    subject = f'{kind.plural} "{name}"' if kind is not None and name else ""
    if code == grpc.StatusCode.NOT_FOUND and subject:
        message = f"{subject} not found"
    elif code == grpc.StatusCode.ALREADY_EXISTS and subject:
        message = f"{subject} already exists"
    elif code == grpc.StatusCode.ABORTED and subject:
        message = f"Operation cannot be fulfilled on {subject}: {details}"
    elif code == grpc.StatusCode.INVALID_ARGUMENT and kind is not None and name and f'"{name}"' not in details:
        message = f'{kind.name} "{name}" is invalid: {details}'
    else:
        message = details
    if action:
        where = f' "{origin}"' if origin else ""
        message = f"error when {action}{where}: {message}"
    return f"Error from server ({reason}): {message}"

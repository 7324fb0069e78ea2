"""Errors as Kubernetes' `Status` objects, mapped from the registries' ApiError codes.

The registries raise ApiError(grpc code, message) for the gRPC API; the REST API answers the
same error with the HTTP code and `reason` Kubernetes gives it (apimachinery's
StatusReason), and, for invalid objects, `details.causes` with each field path parsed from
the "field: reason; field: reason" message the validation wrote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import grpc

from ..errors import ApiError

# grpc code -> (HTTP status, Kubernetes reason), for a request that is not a write of an object.
_BY_CODE: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "BadRequest"),
    grpc.StatusCode.NOT_FOUND: (404, "NotFound"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "AlreadyExists"),
    grpc.StatusCode.ABORTED: (409, "Conflict"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "Forbidden"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "Unauthorized"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "TooManyRequests"),
    grpc.StatusCode.OUT_OF_RANGE: (410, "Expired"),
    # Kubernetes answers a failed precondition (a uid that does not match) with 409 Conflict.
    grpc.StatusCode.FAILED_PRECONDITION: (409, "Conflict"),
    grpc.StatusCode.UNAVAILABLE: (503, "ServiceUnavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "Timeout"),
    grpc.StatusCode.UNIMPLEMENTED: (405, "MethodNotAllowed"),
    grpc.StatusCode.INTERNAL: (500, "InternalError"),
    grpc.StatusCode.UNKNOWN: (500, "InternalError"),
}

# "Pod \"x\" is invalid: a: reason; b: reason": the head validation errors start with (errors.invalid).
_INVALID_HEAD = re.compile(r'^\w+ "[^"]*" is invalid: ')
# One "path: reason" of such a message: a path is a JSON path (letters, digits, dots, [index], [key]).
_CAUSE = re.compile(r"^([A-Za-z][\w]*(?:(?:\.[A-Za-z][\w]*)|(?:\[[^\]]*\]))*): (.*)$", re.S)
# Kubernetes' field.ErrorType words at the start of a reason, and the CauseType each becomes.
_CAUSE_TYPES = {
    "Required value": "FieldValueRequired",
    "Invalid value": "FieldValueInvalid",
    "Unsupported value": "FieldValueNotSupported",
    "Duplicate value": "FieldValueDuplicate",
    "Not found": "FieldValueNotFound",
    "Forbidden": "FieldValueForbidden",
    "Too long": "FieldValueTooLong",
    "Too many": "FieldValueTooMany",
}


@dataclass
class StatusError(Exception):
    """An HTTP answer that is a Kubernetes Status (the REST layer's own errors)."""

    code: int
    reason: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            status["details"] = self.details
        return status


def causes_of(message: str) -> list[dict[str, str]]:
    """details.causes from a validation message: one per "path: reason" it lists."""
    text = _INVALID_HEAD.sub("", message, count=1)
    causes = []
    for part in text.split("; "):
        match = _CAUSE.match(part)
        if match is None:
            continue
        path, reason = match.groups()
        cause_type = next((t for word, t in _CAUSE_TYPES.items() if reason.startswith(word)), "FieldValueInvalid")
        causes.append({"reason": cause_type, "message": reason, "field": path})
    return causes


def from_api_error(error: ApiError, *, kind: str = "", name: str = "", write: bool = False) -> StatusError:
    """The Status for a registry's error. `write`: the request stored an object, whose
    INVALID_ARGUMENT is Kubernetes' 422 Invalid with causes (else 400 BadRequest)."""
    code, reason = _BY_CODE.get(error.code, (500, "InternalError"))
    details: dict[str, Any] = {}
    if name:
        details["name"] = name
    if kind:
        details["kind"] = kind
    message = error.message
    if error.code is grpc.StatusCode.INVALID_ARGUMENT and write:
        causes = causes_of(message)
        if causes or _INVALID_HEAD.match(message):
            code, reason = 422, "Invalid"
            if causes:
                details["causes"] = causes
    elif error.code is grpc.StatusCode.RESOURCE_EXHAUSTED and message.startswith("request:"):
        code, reason = 413, "RequestEntityTooLarge"
    elif error.code is grpc.StatusCode.RESOURCE_EXHAUSTED and " is invalid: " in message:
        # A range with nothing left to allocate (cluster IPs, node ports): Kubernetes' 422... as
        # an invalid object whose field cannot be satisfied; a watcher cut off stays 429.
        code, reason = 422, "Invalid"
        details["causes"] = causes_of(message)
    elif error.code is grpc.StatusCode.ALREADY_EXISTS and " is invalid: " in message:
        code, reason = 422, "Invalid"  # a requested value another object holds (a cluster IP)
        details["causes"] = causes_of(message)
    return StatusError(code, reason, message, details)


def bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)


def not_found_path(path: str) -> StatusError:
    return StatusError(404, "NotFound", f"the server could not find the requested resource ({path})")


def method_not_allowed(method: str, path: str) -> StatusError:
    return StatusError(405, "MethodNotAllowed", f"the server does not allow this method on the requested resource "
                       f"({method} {path})")


def unauthorized(message: str = "Unauthorized") -> StatusError:
    return StatusError(401, "Unauthorized", message)


def too_large(size: int | None, limit: int) -> StatusError:
    """413; size None when the body was cut off at the limit (chunked, no Content-Length)."""
    sent = f"{size / 2**20:.1f} MiB is" if size is not None else "the body is"
    return StatusError(
        413, "RequestEntityTooLarge",
        f"request entity too large: {sent} more than the {limit / 2**20:.1f} MiB an object may be",
    )


def success(kind: str, name: str, uid: str = "") -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": kind}
    if uid:
        details["uid"] = uid
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}

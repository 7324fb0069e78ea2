"""The API server's errors: a gRPC status and a message naming the object or field."""

from __future__ import annotations

import grpc


class ApiError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def not_found(kind_plural: str, namespace: str, name: str) -> ApiError:
    where = f" in namespace {namespace}" if namespace else ""
    return ApiError(grpc.StatusCode.NOT_FOUND, f'{kind_plural} "{name}" not found{where}')


def already_exists(kind_plural: str, namespace: str, name: str) -> ApiError:
    where = f" in namespace {namespace}" if namespace else ""
    return ApiError(grpc.StatusCode.ALREADY_EXISTS, f'{kind_plural} "{name}" already exists{where}')


def conflict(kind_plural: str, name: str, expected: int, actual: int) -> ApiError:
    return ApiError(
        grpc.StatusCode.ABORTED,
        f'operation on {kind_plural} "{name}" cannot be fulfilled: metadata.resourceVersion {expected} '
        f"is stale (stored: {actual}); read the latest version and try again",
    )


def invalid(
    kind_name: str, name: str, errors: list, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
) -> ApiError:
    """Field errors of one object. The code says which kind of problem: INVALID_ARGUMENT
    for bad input, ALREADY_EXISTS for a requested value another object holds (a
    cluster IP), RESOURCE_EXHAUSTED for a range with nothing left to allocate."""
    details = "; ".join(str(e) for e in errors)
    return ApiError(code, f'{kind_name} "{name}" is invalid: {details}')


def require_name(name: str) -> None:
    """A request that names one object must name it."""
    if not name:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "name: required")

"""Authenticates every call before any handler runs, and records the caller for it.

A server interceptor sees the method and metadata but not the peer's certificate (that
is on the call's context), so it wraps the handler it is given: the wrapper
authenticates with the context, refuses with UNAUTHENTICATED, or sets the caller for
the handler and the code below it (auth/context.py). Which services an anonymous caller
may use is decided here; what an authenticated caller may do, by each handler.
"""

from __future__ import annotations

import inspect
from typing import Any, Awaitable, Callable

import grpc

from services.common.identity import ANONYMOUS

from .authenticate import AuthenticationError, Authenticator
from .context import set_current_user

HEALTH_SERVICE = "grpc.health.v1.Health"


class AuthenticatingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self, authenticator: Authenticator, *, anonymous_services: frozenset[str] = frozenset({HEALTH_SERVICE})
    ):
        self.authenticator = authenticator
        self.anonymous_services = anonymous_services
        # The wrapped handler of each method, made once: the per-call cost is a lookup.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service = method.split("/")[1] if method.count("/") >= 2 else ""
        wrapped = _wrap(handler, self._admission(anonymous_ok=service in self.anonymous_services))
        if len(self._wrapped) < 1000:  # methods that exist; unknown ones returned None above
            self._wrapped[method] = wrapped
        return wrapped

    def _admission(self, *, anonymous_ok: bool) -> Callable[[grpc.aio.ServicerContext], Awaitable[bool]]:
        authenticator = self.authenticator

        async def admit(context: grpc.aio.ServicerContext) -> bool:
            """Sets the caller for the handler (True), or refuses the call (False) with its
            status set on the context. Not context.abort: its exception, kept in the call's
            state, holds the wrapper's frame and so the request, 4 MB an anonymous caller could
            make the server keep per call until a full garbage collection (issue 14, D9)."""
            try:
                user = authenticator.authenticate(context.auth_context(), context.invocation_metadata() or ())
            except AuthenticationError as error:
                context.set_code(grpc.StatusCode.UNAUTHENTICATED)
                context.set_details(str(error))
                return False
            if user is ANONYMOUS and not anonymous_ok:
                context.set_code(grpc.StatusCode.UNAUTHENTICATED)
                context.set_details(
                    "no credentials: present a client certificate signed by the cluster CA or a bearer token"
                )
                return False
            set_current_user(user)
            return True

        return admit


def _wrap(handler: grpc.RpcMethodHandler, admit: Callable[[Any], Awaitable[bool]]) -> grpc.RpcMethodHandler:
    """The same handler with admit(context) run first, whatever its streaming shape; a call
    admit refuses ends with the status it set, and no response."""

    def unary_response(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if not await admit(context):
                return None
            return await behaviour(request, context)

        return wrapped

    def stream_response(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behaviour):

            async def generator(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if not await admit(context):
                    return
                async for item in behaviour(request, context):
                    yield item

            return generator

        async def writer(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if not await admit(context):
                return None
            return await behaviour(request, context)

        return writer

    if handler.unary_unary is not None:
        return handler._replace(unary_unary=unary_response(handler.unary_unary))  # type: ignore[attr-defined]
    if handler.unary_stream is not None:
        return handler._replace(unary_stream=stream_response(handler.unary_stream))  # type: ignore[attr-defined]
    if handler.stream_unary is not None:
        return handler._replace(stream_unary=unary_response(handler.stream_unary))  # type: ignore[attr-defined]
    assert handler.stream_stream is not None
    return handler._replace(stream_stream=stream_response(handler.stream_stream))  # type: ignore[attr-defined]

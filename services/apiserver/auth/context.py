"""The caller of the request being served, for the code below the handler (admission).

gRPC's asyncio server runs each call in its own task, so a context variable set by the
authenticating interceptor is the caller of exactly that call. Code that runs outside any
call (start-up repair, the tests of a bare registry) acts as the API server itself.
"""

from __future__ import annotations

from contextvars import ContextVar

from services.common.identity import APISERVER, UserInfo

_caller: ContextVar[UserInfo] = ContextVar("caller", default=APISERVER)


def current_user() -> UserInfo:
    return _caller.get()


def set_current_user(user: UserInfo) -> None:
    _caller.set(user)

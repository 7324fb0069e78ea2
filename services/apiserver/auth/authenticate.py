"""Authentication: who a call comes from, by client certificate or bearer token.

Kubernetes' union of authenticators, in its order: a verified client certificate (the TLS
layer already checked it chains to --client-ca-file and is in date), then a bearer token
from the static token file (--token-auth-file), then a bootstrap token
(--bootstrap-token-file; kubeadm's join tokens). A call with no credentials at all is
anonymous, which only the health service accepts; a call whose token matches nothing is
refused whatever it calls.
"""

from __future__ import annotations

import csv
import datetime
import hmac
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from services.common.identity import (
    ANONYMOUS,
    BOOTSTRAP_USER_PREFIX,
    SYSTEM_BOOTSTRAPPERS,
    UserInfo,
    authenticated,
    user_from_auth_context,
)
from services.common.log import get_logger

log = get_logger()

# kubeadm's bootstrap token: "<6 id chars>.<16 secret chars>", lower-case letters and digits.
BOOTSTRAP_TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")


class AuthenticationError(Exception):
    """Credentials were presented and are not valid (UNAUTHENTICATED, one line)."""


def _read_token_file(path: Path) -> dict[str, UserInfo]:
    """Kubernetes' static token file: CSV `token,user,uid[,"group1,group2"]`."""
    users: dict[str, UserInfo] = {}
    for number, row in enumerate(csv.reader(io.StringIO(path.read_text())), start=1):
        if not row or row[0].startswith("#"):
            continue
        if len(row) < 3 or not row[0] or not row[1]:
            raise ValueError(f"{path}:{number}: expected token,user,uid[,groups]")
        groups = [g.strip() for g in row[3].split(",")] if len(row) > 3 else []
        users[row[0]] = authenticated(row[1], groups, row[2])
    return users


@dataclass(frozen=True)
class BootstrapToken:
    token_id: str
    secret: str
    expires: datetime.datetime | None


def _read_bootstrap_tokens(path: Path) -> dict[str, BootstrapToken]:
    """One token per line: `<id>.<secret>[,<expiry RFC 3339>]`."""
    tokens: dict[str, BootstrapToken] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token, _, expiry = line.partition(",")
        match = BOOTSTRAP_TOKEN.match(token.strip())
        if match is None:
            raise ValueError(f"{path}:{number}: not a bootstrap token (<6 chars>.<16 chars>, [a-z0-9])")
        expires = datetime.datetime.fromisoformat(expiry.strip().replace("Z", "+00:00")) if expiry.strip() else None
        tokens[match.group(1)] = BootstrapToken(match.group(1), match.group(2), expires)
    return tokens


class _ReloadingFile:
    """A credentials file re-read when it changes, so `make join-token` (or an edited
    token file) takes effect without restarting the API server."""

    def __init__(self, path: Path, parse: object) -> None:
        self.path = path
        self._parse = parse
        self._stamp: tuple[float, int] | None = None
        self._value: object = {}  # a file not there yet: nothing in it
        self.value()  # a bad file fails at start, not at the first call

    def value(self) -> object:
        try:
            status = os.stat(self.path)
        except OSError:
            return self._value
        stamp = (status.st_mtime, status.st_size)
        if stamp != self._stamp:
            try:
                self._value = self._parse(self.path)  # type: ignore[operator]
                self._stamp = stamp
            except (OSError, ValueError) as error:
                if self._stamp is None:
                    raise
                log.warning("credentials_file_unreadable_keeping_previous", path=str(self.path), error=str(error))
        return self._value


class Authenticator:
    def __init__(self, *, token_file: str | None = None, bootstrap_token_file: str | None = None) -> None:
        self._tokens = _ReloadingFile(Path(token_file), _read_token_file) if token_file else None
        self._bootstrap = (
            _ReloadingFile(Path(bootstrap_token_file), _read_bootstrap_tokens) if bootstrap_token_file else None
        )

    def authenticate(
        self, auth_context: Mapping[str, Iterable[bytes]], metadata: Iterable[Any]
    ) -> UserInfo:
        """The caller; ANONYMOUS when it presented nothing; AuthenticationError when
        what it presented is not valid."""
        user = user_from_auth_context(auth_context)
        if user is not None:
            return user
        token = _bearer_token(metadata)
        if token is None:
            return ANONYMOUS
        if self._tokens is not None:
            users: dict[str, UserInfo] = self._tokens.value()  # type: ignore[assignment]
            for known, found in users.items():
                if hmac.compare_digest(known, token):
                    return found
        match = BOOTSTRAP_TOKEN.match(token)
        if match is not None and self._bootstrap is not None:
            tokens: dict[str, BootstrapToken] = self._bootstrap.value()  # type: ignore[assignment]
            entry = tokens.get(match.group(1))
            if entry is not None and hmac.compare_digest(entry.secret, match.group(2)):
                if entry.expires is not None and entry.expires <= datetime.datetime.now(datetime.timezone.utc):
                    raise AuthenticationError(f'bootstrap token "{entry.token_id}" has expired')
                return authenticated(BOOTSTRAP_USER_PREFIX + entry.token_id, [SYSTEM_BOOTSTRAPPERS])
        raise AuthenticationError("invalid bearer token")


def _bearer_token(metadata: Iterable[Any]) -> str | None:
    """From gRPC's invocation metadata: (key, value) pairs."""
    for key, value in metadata:
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise AuthenticationError('authorization header: expected "Bearer <token>"')
    return None

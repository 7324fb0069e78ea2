"""pods/{name}/log: a container's output, fetched from the pod's kubelet (its Logs RPC,
through services.common.kubeletclient as kubecfg logs reaches it) and streamed to the
client as chunked text/plain. The API server calls the kubelet with its kubelet-client
certificate (--kubelet-client-certificate); the kubelet asks this server's RBAC whether
that identity may (nodes/log).

Query parameters (Kubernetes' PodLogOptions): `container`, `follow`, `tailLines`,
`timestamps` and `limitBytes`, and `sinceSeconds`/`sinceTime` (the kubelet is asked for
timestamped lines and the older ones are dropped here). `previous` (the container's
previous instance) is refused: the kubelet keeps only the latest.

A follow ends when the container stops or the client goes (aiohttp cancels the handler,
which cancels the kubelet call).
"""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass
from typing import Any, AsyncGenerator, Mapping

import grpc
from aiohttp import web

from kybernetes.v1 import kubelet_pb2
from services.common.kubeletclient import NoKubeletAddress, kubelet_address, stream_logs
from services.common.transport import ClientCredentials

from .status import StatusError, bad_request

_TRUE = ("true", "1")
# How long the kubelet's first answer is waited for before the response's headers go out: an
# error before any output (no such container, not started) is then the status code it should
# be, while a follow of a quiet container still answers at once.
FIRST_CHUNK_WAIT = 1.0
# The kubelet's errors that are the request's fault: 400, as Kubernetes answers them.
_CLIENT_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)


@dataclass(frozen=True)
class LogOptions:
    container: str
    follow: bool
    tail_lines: int
    timestamps: bool
    since: datetime.datetime | None
    limit_bytes: int


def _positive(query: Mapping[str, str], name: str, *, zero: bool = False) -> int:
    text = query.get(name, "")
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f"{name}: invalid value {text[:64]!r}: not an integer") from None
    if value < 0 or (value == 0 and not zero):
        raise bad_request(f"{name}: invalid value {value}: must be greater than {'or equal to ' if zero else ''}0")
    return value


def parse_rfc3339(text: str) -> datetime.datetime:
    """An RFC 3339 time with up to nanoseconds (Docker's timestamps), as an aware datetime."""
    head, dot, rest = text.partition(".")
    if dot:  # datetime reads microseconds at most: the fraction cut to six digits
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[:min(digits, 6)]}{rest[digits:]}"
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def parse_options(pod: Any, query: Mapping[str, str], now: datetime.datetime) -> LogOptions:
    """PodLogOptions from the query, checked against the pod (its containers)."""
    if query.get("previous", "") in _TRUE:
        raise bad_request("previous: not supported: the kubelet keeps only a container's latest instance")
    names = [container.name for container in pod.spec.containers]
    container = query.get("container", "")
    if container and container not in names:
        raise bad_request(f"container {container[:64]} is not valid for pod {pod.metadata.name}")
    if not container:
        if len(names) != 1:
            raise bad_request(f"a container name must be specified for pod {pod.metadata.name}, "
                              f"choose one of: [{' '.join(names)}]")
        container = names[0]
    since = None
    seconds = _positive(query, "sinceSeconds")
    if seconds:
        since = now - datetime.timedelta(seconds=seconds)
    if query.get("sinceTime"):
        if since is not None:
            raise bad_request("sinceTime: at most one of sinceTime or sinceSeconds may be specified")
        try:
            since = parse_rfc3339(query["sinceTime"])
        except ValueError:
            raise bad_request(f"sinceTime: invalid RFC 3339 time {query['sinceTime'][:64]!r}") from None
    return LogOptions(
        container=container,
        follow=query.get("follow", "") in _TRUE,
        tail_lines=_positive(query, "tailLines", zero=True) if "tailLines" in query else -1,
        timestamps=query.get("timestamps", "") in _TRUE,
        since=since,
        limit_bytes=_positive(query, "limitBytes"),
    )


class OutputFilter:
    """What of the kubelet's output goes to the client: lines older than `since` dropped
    (and their timestamps too, unless asked for), at most limit_bytes in all. Pure."""

    def __init__(self, options: LogOptions) -> None:
        self.since = options.since
        self.timestamps = options.timestamps
        self.left = options.limit_bytes or -1
        self._partial = b""

    @property
    def done(self) -> bool:
        return self.left == 0

    def feed(self, data: bytes, *, last: bool = False) -> bytes:
        if self.since is not None:
            data = self._lines(self._partial + data, last)
        if self.left >= 0:
            data = data[: self.left]
            self.left -= len(data)
        return data

    def _lines(self, data: bytes, last: bool) -> bytes:
        lines = data.split(b"\n")
        self._partial = b"" if last else lines.pop()
        kept = []
        for line in lines:
            if not line and last:
                continue
            stamp, _, text = line.partition(b" ")
            try:
                when = parse_rfc3339(stamp.decode())
            except (ValueError, UnicodeDecodeError):
                when = None
            if when is not None and self.since is not None and when < self.since:
                continue
            kept.append(line if self.timestamps or when is None else text)
        return b"".join(line + b"\n" for line in kept)


def kubelet_request(pod: Any, options: LogOptions) -> kubelet_pb2.PodLogsRequest:
    return kubelet_pb2.PodLogsRequest(
        namespace=pod.metadata.namespace,
        name=pod.metadata.name,
        container=options.container,
        follow=options.follow,
        tail_lines=max(options.tail_lines, 0),
        timestamps=options.timestamps or options.since is not None,
    )


def _kubelet_error(error: grpc.aio.AioRpcError, node: str) -> StatusError:
    code, details = error.code(), error.details() or ""
    if code in _CLIENT_CODES:
        return bad_request(details)
    return StatusError(503, "ServiceUnavailable", f'the kubelet of node "{node}" did not answer: '
                       f"{code.name}: {details[:200]}")


async def serve_log(
    request: web.Request, pod: Any, node: Any, credentials: ClientCredentials | None
) -> web.StreamResponse:
    """Streams the log the query asks for (see the module's docstring)."""
    options = parse_options(pod, request.query, datetime.datetime.now(datetime.timezone.utc))
    node_name = pod.spec.node_name
    if options.tail_lines == 0 and not options.follow:
        return web.Response(text="", content_type="text/plain")
    try:
        address = kubelet_address(node)
    except NoKubeletAddress as error:
        raise StatusError(503, "ServiceUnavailable", str(error)) from None
    chunks: AsyncGenerator[bytes, None] = stream_logs(address, credentials, kubelet_request(pod, options))
    first = asyncio.ensure_future(anext(chunks, None))
    try:
        await asyncio.wait({first}, timeout=FIRST_CHUNK_WAIT)
        if first.done() and isinstance(first.exception(), grpc.aio.AioRpcError):
            raise _kubelet_error(first.exception(), node_name)  # type: ignore[arg-type]
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        output = OutputFilter(options)
        try:
            data = await first
            while data is not None and not output.done:
                sent = output.feed(data)
                if sent:
                    await response.write(sent)
                data = await anext(chunks, None)
            rest = b"" if output.done else output.feed(b"", last=True)
            if rest:
                await response.write(rest)
        except grpc.aio.AioRpcError:
            pass  # the headers are gone: the stream just ends (as Kubernetes' does)
        await response.write_eof()
        return response
    finally:
        if not first.done():
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
        await chunks.aclose()

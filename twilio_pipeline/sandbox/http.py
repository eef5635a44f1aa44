"""A small HTTP/1.1 server on asyncio: keep-alive, pipelining, and faults a real server never makes.

Why not http.server: a thread per connection costs more CPU per request than a whole create
(the sandbox must take 1,000 creates/s on 2 cores next to its load client), sleeping for the
simulated latency would hold threads, and injecting a connection reset or a stalled response
needs control of the socket. One event loop does all of that with no locks around the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, unquote_to_bytes

MAX_HEAD = 64 * 1024
MAX_BODY = 256 * 1024 * 1024

REASONS = {
    200: "OK", 201: "Created", 204: "No Content", 307: "Temporary Redirect", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    411: "Length Required", 413: "Payload Too Large", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
}


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    path: str = ""
    query: str = ""
    keep_alive: bool = True
    _query_params: dict[str, list[str]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        path, _, self.query = self.target.partition("?")
        self.path = unquote(path)

    @property
    def params(self) -> dict[str, list[str]]:
        if self._query_params is None:
            self._query_params = parse_form(self.query)
        return self._query_params

    def form(self) -> dict[str, list[str]]:
        return parse_form(self.body.decode("utf-8", errors="replace"))


def parse_form(text: str) -> dict[str, list[str]]:
    """application/x-www-form-urlencoded (or a query) -> {name: [values]}, blanks kept.

    urllib's parse_qs does the same at twice the cost; this decodes only what needs decoding.
    """
    out: dict[str, list[str]] = {}
    for pair in text.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        if "%" in name or "+" in name:
            name = _decode(name)
        if "%" in value or "+" in value:
            value = _decode(value)
        values = out.get(name)
        if values is None:
            out[name] = [value]
        else:
            values.append(value)
    return out


def _decode(text: str) -> str:
    """Percent- and plus-decoding of one form field (UTF-8, invalid bytes replaced)."""
    text = text.replace("+", " ")
    if "%" not in text:
        return text
    return unquote_to_bytes(text).decode("utf-8", "replace")


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] | None = None

    def encode(self, keep_alive: bool) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Unknown')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
        ]
        if self.headers:
            lines.extend(f"{k}: {v}" for k, v in self.headers.items())
        if not keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


# A handler returns a Response now, or an awaitable of one (latency, stalls), or None after it
# has dealt with the connection itself (a reset).
HandlerResult = Response | Awaitable[Response | None] | None
Handler = Callable[[Request, "Connection"], HandlerResult]


class Connection(asyncio.Protocol):
    """One client connection; requests on it are answered in order, one at a time."""

    def __init__(self, handler: Handler, connections: set):
        self.handler = handler
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False
        self.closed = False
        self.continued = False
        self.task: asyncio.Task | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.connections.discard(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._process()

    def reset(self) -> None:
        """Drop the connection with a TCP RST, as a crashing proxy would."""
        if self.closed or self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.closed = True
        self.transport.abort()

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()

    def _parse(self) -> Request | Response | None:
        buf = self.buffer
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                return Response(431, b'{"message":"request head too large"}')
            return None
        head = bytes(buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            return Response(400, b'{"message":"malformed request line"}')
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parsed = _dechunk(buf, start)
            if parsed is None or isinstance(parsed, Response):
                return parsed
            body, consumed = parsed
        else:
            try:
                length = int(headers.get("content-length", "0") or 0)
            except ValueError:
                return Response(400, b'{"message":"bad Content-Length"}')
            if length > MAX_BODY:
                return Response(413, b'{"message":"request body too large"}')
            if len(buf) - start < length:
                if not self.continued and headers.get("expect", "").lower() == "100-continue":
                    self.continued = True  # curl waits a second for this before a large body
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return None
            body = bytes(buf[start : start + length])
            consumed = start + length
        del buf[:consumed]
        self.continued = False
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
        return Request(method.upper(), target, headers, body, keep_alive=keep_alive)

    def _process(self) -> None:
        while not self.busy and not self.closed and self.buffer:
            parsed = self._parse()
            if parsed is None:
                return
            if isinstance(parsed, Response):
                self._send(parsed, False)
                return
            result = self.handler(parsed, self)
            if result is None:
                return
            if isinstance(result, Response):
                self._send(result, parsed.keep_alive)
                continue
            self.busy = True
            self.task = asyncio.ensure_future(result)
            self.task.add_done_callback(lambda task, req=parsed: self._done(task, req))

    def _done(self, task: asyncio.Task, request: Request) -> None:
        self.task = None
        self.busy = False
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._send(Response(500, b'{"code":20500,"message":"Internal Server Error","more_info":'
                                     b'"https://www.twilio.com/docs/errors/20500","status":500}'), False)
            return
        response = task.result()
        if response is None:
            return
        self._send(response, request.keep_alive)
        self._process()

    def _send(self, response: Response, keep_alive: bool) -> None:
        if self.closed or self.transport is None:
            return
        self.transport.write(response.encode(keep_alive))
        if not keep_alive:
            self.closed = True
            self.transport.close()


_HEX = frozenset(b"0123456789abcdefABCDEF")


def _dechunk(buf: bytearray, start: int) -> tuple[bytes, int] | Response | None:
    """Decode a chunked body starting at `start`: (body, bytes consumed), None until it is complete, or the
    error Response — 400 for a malformed chunk, 413 as soon as the declared sizes pass MAX_BODY (before the
    data arrives), so chunked framing gets the same limits as Content-Length."""
    body = bytearray()
    pos = start
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return _BAD_CHUNK if len(buf) - pos > MAX_HEAD else None
        size_text = bytes(buf[pos:line_end]).split(b";")[0].strip()
        if not size_text or len(size_text) > 16 or not set(size_text) <= _HEX:
            return _BAD_CHUNK
        size = int(size_text, 16)
        if len(body) + size > MAX_BODY:
            return Response(413, b'{"message":"request body too large"}')
        pos = line_end + 2
        if size == 0:
            return _trailer_end(buf, pos, bytes(body))
        if len(buf) < pos + size + 2:
            return None
        if buf[pos + size : pos + size + 2] != b"\r\n":
            return _BAD_CHUNK
        body += buf[pos : pos + size]
        pos += size + 2


_BAD_CHUNK = Response(400, b'{"message":"malformed chunked body"}')


def _trailer_end(buf: bytearray, pos: int, body: bytes) -> tuple[bytes, int] | Response | None:
    """Skip the trailer fields after the last chunk, up to the empty line that ends the message."""
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return _BAD_CHUNK if len(buf) - pos > MAX_HEAD else None
        if line_end == pos:
            return body, pos + 2
        pos = line_end + 2

"""A small scripted HTTP server standing in for Twilio in client tests.

Real sockets, so timeouts, resets and connection pooling behave as in production; each route plays a
script of answers (the last one repeats) and every request is recorded as the server saw it.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    method: str
    path: str
    raw_query: str
    headers: dict[str, str]
    body: bytes

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.raw_query, keep_blank_values=True)

    @property
    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode(), keep_blank_values=True)


@dataclass
class Answer:
    status: int = 200
    json: object = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # wait before answering (read timeouts)
    reset: bool = False  # abort the connection (RST) after reading the request


def reply(status: int = 200, json_body: object = None, **kw) -> Answer:
    return Answer(status=status, json=json_body, **kw)


def twilio_error(status: int, code: int, message: str, **kw) -> Answer:
    return Answer(
        status=status,
        json={"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status},
        **kw,
    )


class FakeTwilio:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._scripts: dict[tuple[str, str], list] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                seen = Seen(self.command, parts.path, parts.query, dict(self.headers.items()), body)
                with owner._lock:
                    owner.seen.append(seen)
                    answer = owner._next(self.command, parts.path, seen)
                if answer.delay_s:
                    owner._closing.wait(answer.delay_s)
                if answer.reset:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if answer.body is not None:
                    payload = answer.body
                    ctype = answer.headers.get("Content-Type", "application/octet-stream")
                elif answer.json is not None:
                    payload = json.dumps(answer.json).encode()
                    ctype = "application/json"
                else:
                    payload, ctype = b"", "application/json"
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("Twilio-Request-Id", "RQ" + "0" * 32)
                    for k, v in answer.headers.items():
                        if k != "Content-Type":
                            self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    self.close_connection = True

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def script(self, method: str, path: str, *answers) -> None:
        """Answers for a route, in order; the last repeats. An answer may be a callable(Seen) -> Answer."""
        with self._lock:
            self._scripts[(method, path)] = list(answers)

    def _next(self, method: str, path: str, seen: Seen) -> Answer:
        script = self._scripts.get((method, path))
        if not script:
            return twilio_error(404, 20404, f"no route {method} {path}")
        answer = script.pop(0) if len(script) > 1 else script[0]
        return answer(seen) if callable(answer) else answer

    def requests_to(self, method: str, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.method == method and s.path == path]

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()


def unused_port() -> int:
    """A local port nobody listens on (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port

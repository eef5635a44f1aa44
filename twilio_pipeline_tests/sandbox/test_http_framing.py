"""The sandbox's HTTP framing: a client that sends a broken or oversized chunked body gets an answer (400 /
413), never a dropped connection, and a well-formed chunked request (trailer included) is served."""

from __future__ import annotations

import base64
import socket
from urllib.parse import urlparse


def _raw(api, body: bytes, path: str | None = None) -> bytes:
    """Send one chunked POST as raw bytes; return everything the server answered before closing."""
    url = urlparse(api.base)
    auth = base64.b64encode(f"{api.account}:{api.sandbox.auth_token}".encode()).decode()
    head = (f"POST {path or api.messages_path} HTTP/1.1\r\nHost: {url.hostname}\r\n"
            f"Authorization: Basic {auth}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _status(answer: bytes) -> int:
    assert answer, "the sandbox dropped the connection without an answer"
    return int(answer.split(b" ", 2)[1])


def test_a_malformed_chunk_size_is_answered_400(api):
    assert _status(_raw(api, b"zz\r\nTo=%2B15005550010\r\n0\r\n\r\n")) == 400


def test_chunk_data_without_its_crlf_is_answered_400(api):
    assert _status(_raw(api, b"3\r\nTo=XYZ\r\n0\r\n\r\n")) == 400


def test_a_chunked_body_past_the_limit_is_answered_413_before_its_data(api):
    # 512 MiB declared; the server answers on the size line without waiting for the data
    assert _status(_raw(api, b"20000000\r\n")) == 413


def test_a_chunked_create_with_a_trailer_is_served(api):
    form = b"To=%2B15005550010&From=%2B15005550006&Body=chunked"
    body = b"%x\r\n%s\r\n0\r\nX-Trailer: yes\r\n\r\n" % (len(form), form)
    answer = _raw(api, body)
    assert _status(answer) == 201, answer
    assert b'"body": "chunked"' in answer or b'"body":"chunked"' in answer

"""The decoder of one Bulk Export day file: a streamed, possibly gzip (possibly multi-member) JSON Lines
body, read chunk by chunk into dicts so a day of millions of messages never sits in memory.

A broken file is one `MalformedResponse` naming the day and line; a download that breaks off is
`TwilioUnavailable`. Neither is retried here: the sync asks for the day again on its next run.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from datetime import date

import requests

from twilio_pipeline.twilio.errors import MalformedResponse, TwilioUnavailable
from twilio_pipeline.twilio.redact import Redactor


def iter_export_records(resp: requests.Response, day: date, shown: str, redactor: Redactor) -> Iterator[dict]:
    """Stream the body of `resp` (the day file of `day`, at URL `shown`) into dicts; closes `resp`."""
    decomp = None
    plain = False
    head = b""
    buf = b""
    line_no = 0

    def lines_of(data: bytes) -> Iterator[dict]:
        nonlocal buf, line_no
        buf += data
        if b"\n" not in buf:
            return
        parts = buf.split(b"\n")
        buf = parts.pop()
        for raw in parts:
            line_no += 1
            rec = _json_line(raw, line_no, day, shown)
            if rec is not None:
                yield rec

    try:
        for chunk in resp.iter_content(64 * 1024):
            if not chunk:
                continue
            if decomp is None and not plain:
                head += chunk
                if len(head) < 2:
                    continue
                chunk, head = head, b""
                if chunk[:2] == b"\x1f\x8b":
                    decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
                else:
                    plain = True
            if plain:
                yield from lines_of(chunk)
                continue
            out = decomp.decompress(chunk)
            while decomp.eof and decomp.unused_data:
                rest = decomp.unused_data
                decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
                out += decomp.decompress(rest)
            yield from lines_of(out)
        if head:
            yield from lines_of(head)
        if decomp is not None:
            tail = decomp.flush()
            if not decomp.eof:
                raise MalformedResponse(
                    f"export day {day.isoformat()} is a truncated gzip file", method="GET", url=shown
                )
            yield from lines_of(tail)
        if buf.strip():
            line_no += 1
            rec = _json_line(buf, line_no, day, shown)
            buf = b""
            if rec is not None:
                yield rec
    except zlib.error as exc:
        raise MalformedResponse(
            f"export day {day.isoformat()} is not a readable gzip file: {exc}", method="GET", url=shown
        ) from None
    except requests.RequestException as exc:
        raise TwilioUnavailable(
            redactor.redact(f"download of export day {day.isoformat()} broke off: {type(exc).__name__}: {exc}"),
            method="GET", url=shown,
        ) from None
    finally:
        resp.close()


def _json_line(raw: bytes, line_no: int, day: date, shown: str) -> dict | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        rec = json.loads(raw)
    except ValueError:
        raise MalformedResponse(
            f"export day {day.isoformat()}: line {line_no} is not valid JSON", method="GET", url=shown
        ) from None
    if not isinstance(rec, dict):
        raise MalformedResponse(
            f"export day {day.isoformat()}: line {line_no} is not a JSON object", method="GET", url=shown
        )
    return rec

"""One HTTP exchange with Twilio and the sorting of what came back.

`Transport` owns the pooled `requests` sessions (one carrying our credentials, one plain for foreign
download links), the adaptive limiter and optional token bucket every request passes, the request
counters and the trace. It turns each exchange into a response or a sorted failure:

* a `Failure` of one of the kinds below when the retry policy (`retry.py`) may repeat the request;
* a typed `TwilioApiError` (credentials rejected, a 4xx, a request that cannot be made) otherwise.

Which kinds are repeated for which method is the retry policy's business, not this module's.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

from twilio_pipeline.dates import parse_twilio_date
from twilio_pipeline.twilio.errors import CredentialsRejected, TwilioApiError
from twilio_pipeline.twilio.redact import Redactor
from twilio_pipeline.twilio.throttle import AdaptiveLimiter, TokenBucket

QUEUE_FULL_CODE = 21611
TOO_MANY_REQUESTS_CODE = 20429
NOT_PROCESSED_CODES = (TOO_MANY_REQUESTS_CODE, QUEUE_FULL_CODE)  # Twilio says: not processed, safe to retry
REDIRECTS = (301, 302, 303, 307, 308)
_FORM = "application/x-www-form-urlencoded"

# --- failure kinds ------------------------------------------------------------------------------
NOT_SENT = "not_sent"  # connection failed before the request left: safe to retry any method
AFTER_SENT = "after_sent"  # read timeout / reset once the request was sent: GET retry, POST ambiguous
THROTTLED = "throttled"  # 429 / 20429, or 21611 on create: not processed, retry within budget
SERVER = "server"  # 5xx: GET retry, POST ambiguous
MALFORMED = "malformed"  # unusable 2xx body: GET retry, POST ambiguous


class Failure(Exception):
    """One attempt failed in a way the retry loop may repeat; never escapes the client."""

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        status: int | None = None,
        code: int | None = None,
        more_info: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status = status
        self.code = code
        self.more_info = more_info
        self.retry_after = retry_after


class _PresetBasicAuth(AuthBase):
    """Basic auth with the header value computed once (cheaper than requests' per-request encode)."""

    __slots__ = ("_value",)

    def __init__(self, username: str, password: str) -> None:
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._value = f"Basic {token}"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = self._value
        return r

    def __repr__(self) -> str:
        return "<basic auth: redacted>"


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower() + f":{parts.port or ''}"


def _display_url(url: str) -> str:
    """The URL as it may be shown: without any user:password@ part."""
    if "@" not in url:
        return url
    p = urlsplit(url)
    if p.username is None and p.password is None:
        return url
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    return urlunsplit((p.scheme, host, p.path, p.query, p.fragment))


def retry_after_s(value: str | None) -> float | None:
    """`Retry-After` as seconds (delta-seconds or HTTP-date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    when = parse_twilio_date(value)  # an HTTP-date is RFC 2822
    if when is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def form_body(params: Mapping[str, Any]) -> bytes:
    """Form-encode like requests does (None dropped, sequences repeated), without its per-call
    protocol checks."""
    pairs = []
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, (str, bytes, int, float)):
            pairs.append((key, value))
        else:
            pairs.extend((key, v) for v in value if v is not None)
    return urlencode(pairs).encode("ascii")


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.strip().isdigit():
        return int(v.strip())
    return None


def _new_session(pool: int) -> requests.Session:
    s = requests.Session()
    adapter = HTTPAdapter(pool_connections=10, pool_maxsize=pool, max_retries=0, pool_block=False)
    s.mount("https://", adapter)
    s.mount("http://", adapter)
    s.headers["Accept"] = "application/json"
    s.headers["User-Agent"] = f"twilio_pipeline python-requests/{requests.__version__}"
    return s


class Transport:
    """Sessions, flow control, counters and trace of one client; every request goes through `send`.

    `principal` names whose credentials these are in a rejection ("account AC…", "API key SK… of
    account AC…"); `auth_bases` are the configured base URLs, the only origins credentials go to;
    `post_url` is the URL whose POSTs take the prepared fast path (POST Messages)."""

    def __init__(
        self,
        *,
        username: str,
        password: str,
        principal: str,
        redactor: Redactor,
        auth_bases: tuple[str, ...],
        post_url: str,
        max_concurrency: int,
        requests_per_second: float | None,
        timeout: tuple[float, float],
        trace: Callable[[str], None] | None,
    ) -> None:
        self.redactor = redactor
        self.limiter = AdaptiveLimiter(max_concurrency)
        self.tracing = trace is not None
        self._principal = principal
        self._trace = trace
        self._timeout = timeout
        self._auth_origins = {_origin(u) for u in auth_bases}
        self._bucket = TokenBucket(requests_per_second) if requests_per_second else None
        self._count_lock = threading.Lock()
        self.request_count = 0
        self.throttled_count = 0

        pool = max(int(max_concurrency), 10)
        self._session = _new_session(pool)
        self._session.auth = _PresetBasicAuth(username, password)
        # Downloads from a foreign host (the S3 link of a bulk export day) never carry our credentials.
        self._plain_session = _new_session(4)
        # Fast path for POST Messages: the headers (auth included) are prepared once, and the
        # environment (proxies, CA bundle) is read once instead of scanning os.environ per request.
        self._post_url = post_url
        template = self._session.prepare_request(
            requests.Request("POST", post_url, headers={"Content-Type": _FORM})
        )
        template.headers.pop("Content-Length", None)
        self._post_headers = template.headers
        env = self._session.merge_environment_settings(post_url, {}, False, None, None)
        self._post_kwargs = {
            "timeout": timeout,
            "allow_redirects": False,
            "stream": False,
            "verify": env["verify"],
            "cert": env["cert"],
            "proxies": env["proxies"],
        }

    def close(self) -> None:
        self._session.close()
        self._plain_session.close()

    def is_foreign(self, url: str) -> bool:
        """Whether `url` points outside the configured bases (it then gets no credentials)."""
        return _origin(url) not in self._auth_origins

    def post_form(self, params: Mapping[str, Any]) -> requests.Response:
        """POST `params` to `post_url` through the prepared fast path (token bucket first)."""
        if self._bucket is not None:
            self._bucket.take()
        prepared = requests.PreparedRequest()
        prepared.method = "POST"
        prepared.url = self._post_url
        prepared.headers = headers = self._post_headers.copy()
        prepared.body = body = form_body(params)
        headers["Content-Length"] = str(len(body))
        return self.send("POST", self._post_url, prepared=prepared)

    def send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        foreign: bool = False,
        stream: bool = False,
        limited: bool = True,
        prepared: requests.PreparedRequest | None = None,
    ) -> requests.Response:
        """One HTTP exchange through the limiter; transport errors become `Failure` or TwilioApiError.
        `foreign` sends without credentials (a download link outside the configured bases)."""
        if limited:
            self.limiter.acquire()
        ok = throttled = False
        t0 = time.perf_counter()
        try:
            try:
                if prepared is not None:
                    resp = self._session.send(prepared, **self._post_kwargs)
                else:
                    resp = (self._plain_session if foreign else self._session).request(
                        method, url, params=params, data=data, timeout=self._timeout,
                        allow_redirects=False, stream=stream,
                    )
            except requests.RequestException as exc:
                if self._trace is not None:
                    self.emit(
                        f"HTTP {method} {self.show(url, foreign)} -> {type(exc).__name__} "
                        f"after {(time.perf_counter() - t0) * 1000:.1f} ms"
                    )
                raise self._transport_failure(exc, method, url, foreign) from None
            status = resp.status_code
            throttled = status == 429
            ok = status < 500 and not throttled
            if self._trace is not None:
                rid = resp.headers.get("Twilio-Request-Id") or "-"
                self.emit(
                    f"HTTP {method} {self.show(resp.url, foreign)} -> {status} "
                    f"in {(time.perf_counter() - t0) * 1000:.1f} ms (request id {rid})"
                )
            return resp
        finally:
            with self._count_lock:
                self.request_count += 1
                if throttled:
                    self.throttled_count += 1
            if limited:
                self.limiter.release(ok=ok, throttled=throttled, latency_s=time.perf_counter() - t0 if ok else None)

    def _transport_failure(
        self, exc: requests.RequestException, method: str, url: str, foreign: bool = False
    ) -> Exception:
        text = self.redactor.redact(f"{type(exc).__name__}: {exc}")
        if foreign and "?" in url:  # a presigned download link's query is a credential too
            text = text.replace(url.split("?", 1)[1], "[REDACTED]")
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return Failure(NOT_SENT, f"connect timeout ({text})")
        if isinstance(exc, requests.exceptions.ConnectionError):
            reason = exc.args[0] if exc.args else None
            if isinstance(reason, MaxRetryError):
                reason = reason.reason
            if isinstance(exc, requests.exceptions.ProxyError) or isinstance(
                reason, (NewConnectionError, ConnectTimeoutError)
            ):
                return Failure(NOT_SENT, f"could not connect ({text})")
            if isinstance(exc, requests.exceptions.SSLError):
                inner = reason.args[0] if isinstance(reason, Exception) and reason.args else reason
                if isinstance(inner, ssl.SSLCertVerificationError) or isinstance(reason, ssl.SSLCertVerificationError):
                    return Failure(NOT_SENT, f"TLS certificate rejected ({text})")
            return Failure(AFTER_SENT, f"connection lost after sending ({text})")
        if isinstance(
            exc,
            (
                requests.exceptions.ReadTimeout,
                requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError,
            ),
        ):
            label = "read timeout" if isinstance(exc, requests.exceptions.ReadTimeout) else "incomplete response"
            return Failure(AFTER_SENT, f"{label} ({text})")
        return TwilioApiError(f"request could not be made: {text}", method=method, url=self.show(url, foreign))

    # --- sorting answers ------------------------------------------------------------------------
    def parse_object(self, resp: requests.Response, require_key: str | None, require_list: str | None) -> dict:
        """A 2xx body as a JSON object carrying `require_key` / the list `require_list`, else MALFORMED."""
        status = resp.status_code
        try:
            body = json.loads(resp.content)
        except ValueError:
            ctype = resp.headers.get("Content-Type", "?")
            raise Failure(
                MALFORMED, f"HTTP {status} with a body that is not valid JSON ({ctype})", status=status
            ) from None
        if not isinstance(body, dict):
            raise Failure(MALFORMED, f"HTTP {status} with JSON that is not an object", status=status)
        if require_key and not body.get(require_key):
            if "code" in body and "message" in body:
                raise Failure(
                    MALFORMED,
                    self.redactor.redact(f"HTTP {status} carrying an error body: {body.get('code')} {body.get('message')}"),
                    status=status, code=_as_int(body.get("code")),
                )
            raise Failure(MALFORMED, f"HTTP {status} without the required field '{require_key}'", status=status)
        if require_list and not isinstance(body.get(require_list), list):
            raise Failure(MALFORMED, f"HTTP {status} without the list '{require_list}'", status=status)
        return body

    def error_fields(self, resp: requests.Response) -> tuple[int | None, str, str | None]:
        """Twilio's (code, message, more_info) from an error body; falls back to the HTTP reason."""
        code = more_info = None
        message = None
        try:
            body = json.loads(resp.content) if resp.content else None
        except ValueError:
            body = None
        if isinstance(body, dict):
            code = _as_int(body.get("code"))
            msg = body.get("message") or body.get("detail") or body.get("title")
            message = str(msg) if msg else None
            info = body.get("more_info")
            more_info = str(info) if info else None
        if not message:
            message = f"HTTP {resp.status_code} {resp.reason or ''}".strip()
        redact = self.redactor.redact
        return code, redact(message), (redact(more_info) if more_info else None)

    def non_success(self, resp: requests.Response, method: str, url: str, *, probe: bool = False) -> Any:
        """Raise for a non-2xx answer: retriable ones as `Failure`, the rest as typed errors."""
        status = resp.status_code
        code, message, more_info = self.error_fields(resp)
        if status in (401, 403):
            raise self.rejected(resp, code, message, more_info, method, url, probe=probe)
        if status == 429 or code == TOO_MANY_REQUESTS_CODE:
            raise Failure(
                THROTTLED, f"HTTP {status}: {message}", status=status, code=code, more_info=more_info,
                retry_after=retry_after_s(resp.headers.get("Retry-After")),
            )
        if status >= 500:
            raise Failure(
                SERVER, f"HTTP {status}: {message}", status=status, code=code, more_info=more_info,
                retry_after=retry_after_s(resp.headers.get("Retry-After")),
            )
        raise TwilioApiError(
            message, status=status, code=code, more_info=more_info, method=method, url=self.show(url)
        )

    def rejected(
        self, resp: requests.Response, code: int | None, message: str, more_info: str | None,
        method: str, url: str, *, probe: bool = False,
    ) -> CredentialsRejected:
        text = f"Twilio rejected the credentials for {self._principal}: {message}"
        if resp.status_code == 403 and probe:
            text += " (Twilio test credentials get 403 here: set the channel's connectivity_test to false)"
        return CredentialsRejected(
            self.redactor.redact(text), status=resp.status_code, code=code, more_info=more_info,
            method=method, url=self.show(url),
        )

    # --- text hygiene -------------------------------------------------------------------------
    def show(self, url: str, foreign: bool = False) -> str:
        """The URL as it may appear in errors and traces: no userinfo, no secrets, no presigned query."""
        if foreign:
            url = url.split("?", 1)[0]
        return self.redactor.redact(_display_url(url))

    def emit(self, line: str) -> None:
        self._trace(self.redactor.redact(line))

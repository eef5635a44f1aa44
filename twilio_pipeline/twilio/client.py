"""Twilio REST client: one pooled `requests.Session`, typed errors, safe retries.

Retry rules (the reason for most of this module):

* "Not processed" failures are retried for every method: HTTP 429 / 20429 and, on POST Messages,
  21611 (sender queue full) until the request has waited the channel's `throttle_budget_s`; a
  connection that failed before the request was sent (refused, connect timeout, DNS) up to
  `max_attempts`.
* 5xx, read timeouts, resets after sending and unusable 2xx bodies are retried for GET only. On a
  POST they are *ambiguous* - Twilio may have acted - so POST Messages returns them as an
  `ambiguous` CreateResult (outbound fulfillment reconciles it by listing) and other POSTs raise
  `AmbiguousRequest`; nothing is re-POSTed blindly.
* Backoff is exponential with full jitter between `min_delay_s` and `max_delay_s` (tenacity's
  `wait_random_exponential`), except after a 429: that request was not processed and the adaptive
  limiter already keeps fewer in flight, so it is retried after 50 ms, doubling with jitter up to
  `max_delay_s`. `Retry-After` is honoured when present: in full for throttling (floored at
  `min_delay_s` so a zero header cannot spin, capped by what is left of the throttle budget), capped
  at `max_delay_s` for the other retriable errors.

The first attempt runs without any retry machinery (the send path is CPU-benchmarked against a bare
`requests.Session` loop); tenacity takes over only after a retriable failure.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urljoin, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

from twilio_pipeline.twilio.dates import format_rfc3339
from twilio_pipeline.twilio.errors import (
    AmbiguousRequest,
    CredentialsRejected,
    MalformedResponse,
    TwilioApiError,
    TwilioUnavailable,
)
from twilio_pipeline.twilio.redact import Redactor
from twilio_pipeline.twilio.throttle import AdaptiveLimiter, TokenBucket

API_VERSION = "2010-04-01"
MAX_PAGE_SIZE = 1000
MAX_EXPORT_DAYS_PAGE_SIZE = 400
QUEUE_FULL_CODE = 21611
TOO_MANY_REQUESTS_CODE = 20429
_NOT_PROCESSED_CODES = (TOO_MANY_REQUESTS_CODE, QUEUE_FULL_CODE)  # Twilio says: not processed, safe to retry
_THROTTLE_FLOOR_S = 0.05  # least wait between throttled attempts, so the budget always runs down
_REDIRECTS = (301, 302, 303, 307, 308)
_FORM = "application/x-www-form-urlencoded"
_T = TypeVar("_T")

ACCEPTED = "accepted"
REFUSED = "refused"
AMBIGUOUS = "ambiguous"


@dataclass(frozen=True, repr=False)
class TwilioCredentials:
    """Account SID plus either its auth token or an API key (SID + secret); secrets never in repr."""

    account_sid: str
    auth_token: str | None = None
    api_key_sid: str | None = None
    api_key_secret: str | None = None

    @property
    def username(self) -> str:
        return self.api_key_sid or self.account_sid

    @property
    def password(self) -> str | None:
        return self.api_key_secret or self.auth_token

    def __repr__(self) -> str:
        parts = [f"account_sid={self.account_sid!r}"]
        if self.api_key_sid:
            parts.append(f"api_key_sid={self.api_key_sid!r}")
        parts.append("auth_token=***" if self.auth_token else "auth_token=None")
        if self.api_key_secret:
            parts.append("api_key_secret=***")
        return f"TwilioCredentials({', '.join(parts)})"


@dataclass(frozen=True)
class RetrySettings:
    """The channel's `retry` key: attempts for retriable errors, backoff bounds, throttle budget."""

    max_attempts: int = 5
    min_delay_s: float = 1.0
    max_delay_s: float = 20.0
    throttle_budget_s: float = 600.0


@dataclass(frozen=True)
class Endpoints:
    """Base URLs; the sandbox serves all three on one port."""

    api_base: str = "https://api.twilio.com"
    bulkexports_base: str = "https://bulkexports.twilio.com"
    messaging_base: str = "https://messaging.twilio.com"


@dataclass(frozen=True, slots=True)
class CreateResult:
    """Outcome of one POST Messages: accepted (message holds the resource), refused (Twilio's code),
    or ambiguous (the POST may have created a message; reconcile by listing To= since started_at)."""

    outcome: str
    message: dict | None
    error_code: int | None
    error_message: str | None
    http_status: int | None
    attempts: int
    started_at: datetime

    @property
    def accepted(self) -> bool:
        return self.outcome == ACCEPTED

    @property
    def refused(self) -> bool:
        return self.outcome == REFUSED

    @property
    def ambiguous(self) -> bool:
        return self.outcome == AMBIGUOUS


# --- internal failure kinds -------------------------------------------------------------------
_NOT_SENT = "not_sent"  # connection failed before the request left: safe to retry any method
_AFTER_SENT = "after_sent"  # read timeout / reset once the request was sent: GET retry, POST ambiguous
_THROTTLED = "throttled"  # 429 / 20429, or 21611 on create: not processed, retry within budget
_SERVER = "server"  # 5xx: GET retry, POST ambiguous
_MALFORMED = "malformed"  # unusable 2xx body: GET retry, POST ambiguous


class _Failure(Exception):
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


def _retry_after_s(value: str | None) -> float | None:
    """`Retry-After` as seconds (delta-seconds or HTTP-date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _form_body(params: Mapping[str, Any]) -> bytes:
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


class TwilioClient:
    """Thread-safe Twilio REST client for one channel (one session, limiter and trace)."""

    def __init__(
        self,
        credentials: TwilioCredentials,
        *,
        endpoints: Endpoints = Endpoints(),
        retry: RetrySettings = RetrySettings(),
        max_concurrency: int = 20,
        requests_per_second: float | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        trace: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not credentials.account_sid:
            raise ValueError("Twilio account SID is missing")
        password = credentials.password
        if not password:
            raise ValueError("Twilio credentials need an auth token or an API key secret")
        self._credentials = credentials
        self._redactor = Redactor.for_basic_auth(
            credentials.username, password, credentials.auth_token, credentials.api_key_secret
        )
        self._retry = retry
        self._trace = trace
        self._sleep = sleep
        self._timeout = (connect_timeout_s, read_timeout_s)
        self._api = endpoints.api_base.rstrip("/")
        self._bulk = endpoints.bulkexports_base.rstrip("/")
        self._messaging = endpoints.messaging_base.rstrip("/")
        self._auth_origins = {_origin(u) for u in (self._api, self._bulk, self._messaging)}
        self._account_path = f"{self._api}/{API_VERSION}/Accounts/{quote(credentials.account_sid, safe='')}"
        self._messages_url = f"{self._account_path}/Messages.json"

        self._limiter = AdaptiveLimiter(max_concurrency)
        self._bucket = TokenBucket(requests_per_second) if requests_per_second else None
        self._count_lock = threading.Lock()
        self._requests = 0
        self._throttled = 0

        pool = max(int(max_concurrency), 10)
        self._session = self._new_session(pool)
        self._session.auth = _PresetBasicAuth(credentials.username, password)
        # Downloads from a foreign host (the S3 link of a bulk export day) never carry our credentials.
        self._plain_session = self._new_session(4)
        # Fast path for POST Messages: the headers (auth included) are prepared once, and the
        # environment (proxies, CA bundle) is read once instead of scanning os.environ per request.
        template = self._session.prepare_request(
            requests.Request("POST", self._messages_url, headers={"Content-Type": _FORM})
        )
        template.headers.pop("Content-Length", None)
        self._post_headers = template.headers
        env = self._session.merge_environment_settings(self._messages_url, {}, False, None, None)
        self._post_kwargs = {
            "timeout": self._timeout,
            "allow_redirects": False,
            "stream": False,
            "verify": env["verify"],
            "cert": env["cert"],
            "proxies": env["proxies"],
        }
        self._backoff = wait_random_exponential(
            multiplier=max(retry.min_delay_s, 0.1), min=retry.min_delay_s, max=retry.max_delay_s
        )
        # A 429 was not processed and the limiter already keeps fewer requests in flight: retry soon
        # (50 ms, doubling, full jitter) rather than after the channel's min_delay_s, which left a
        # long tail of parked messages behind every burst of 429s.
        self._throttle_backoff = wait_random_exponential(
            multiplier=_THROTTLE_FLOOR_S, min=_THROTTLE_FLOOR_S, max=max(retry.max_delay_s, _THROTTLE_FLOOR_S)
        )

    @staticmethod
    def _new_session(pool: int) -> requests.Session:
        s = requests.Session()
        adapter = HTTPAdapter(pool_connections=10, pool_maxsize=pool, max_retries=0, pool_block=False)
        s.mount("https://", adapter)
        s.mount("http://", adapter)
        s.headers["Accept"] = "application/json"
        s.headers["User-Agent"] = f"twilio_pipeline python-requests/{requests.__version__}"
        return s

    # --- properties ---------------------------------------------------------------------------
    @property
    def account_sid(self) -> str:
        return self._credentials.account_sid

    @property
    def request_count(self) -> int:
        return self._requests

    @property
    def throttled_count(self) -> int:
        return self._throttled

    @property
    def limiter(self) -> AdaptiveLimiter:
        return self._limiter

    @property
    def redactor(self) -> Redactor:
        return self._redactor

    def close(self) -> None:
        self._session.close()
        self._plain_session.close()

    def __enter__(self) -> "TwilioClient":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TwilioClient(account_sid={self.account_sid!r}, api_base={self._api!r})"

    # --- public API -----------------------------------------------------------------------------
    def connectivity_test(self) -> int:
        """Cheap authenticated probe; returns how many incoming numbers the first page (size 1) holds."""
        url = f"{self._account_path}/IncomingPhoneNumbers.json"
        data = self._get_json(url, {"PageSize": "1"}, require_list="incoming_phone_numbers", probe=True)
        return len(data["incoming_phone_numbers"])

    def create_message(self, params: Mapping[str, str | Sequence[str]],
                       proceed: Callable[[], bool] | None = None) -> CreateResult:
        """POST Messages. Per-recipient refusals and ambiguous outcomes are results, not exceptions.

        `proceed` is asked before each retry (only failures that created nothing are retried): False
        ends the request with TwilioUnavailable, nothing sent - the sender's lease gates every request."""
        started = datetime.now(timezone.utc)
        try:
            return self._create_once(params, started, 1)
        except _Failure as exc:
            first = exc
        attempts = [1]

        def attempt() -> CreateResult:
            if proceed is not None and not proceed():
                raise TwilioUnavailable("not retried: the sender stopped sending", method="POST",
                                        url=self._show(self._messages_url), attempts=attempts[0])
            attempts[0] += 1
            return self._create_once(params, started, attempts[0])

        return self._with_retries(attempt, first, "POST", self._messages_url, attempts)

    def fetch_message(self, sid: str) -> dict | None:
        """GET one message; None when Twilio does not know the SID (404)."""
        url = f"{self._account_path}/Messages/{quote(sid, safe='')}.json"
        return self._get_json(url, None, require_key="sid", not_found_none=True)

    def iter_messages(
        self,
        *,
        to: str | None = None,
        from_: str | None = None,
        date_sent_after: datetime | None = None,
        date_sent_before: datetime | None = None,
        date_sent: date | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[dict]:
        """Every message matching the filters, page by page (lazy). Unknown statuses pass unchanged."""
        for page in self.iter_message_pages(
            to=to,
            from_=from_,
            date_sent_after=date_sent_after,
            date_sent_before=date_sent_before,
            date_sent=date_sent,
            page_size=page_size,
        ):
            yield from page

    def iter_message_pages(
        self,
        *,
        to: str | None = None,
        from_: str | None = None,
        date_sent_after: datetime | None = None,
        date_sent_before: datetime | None = None,
        date_sent: date | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[list[dict]]:
        """One list per page, following `next_page_uri`, so callers stream with bounded memory."""
        params: dict[str, str] = {}
        if to:
            params["To"] = to
        if from_:
            params["From"] = from_
        if date_sent is not None:
            if isinstance(date_sent, datetime):  # a UTC day, as Twilio means it
                date_sent = (date_sent.astimezone(timezone.utc) if date_sent.tzinfo else date_sent).date()
            params["DateSent"] = date_sent.isoformat()
        if date_sent_after is not None:
            params["DateSent>"] = format_rfc3339(date_sent_after)
        if date_sent_before is not None:
            if date_sent_before.microsecond:  # round up: whole seconds must not drop the last messages
                date_sent_before = date_sent_before + timedelta(microseconds=1_000_000 - date_sent_before.microsecond)
            params["DateSent<"] = format_rfc3339(date_sent_before)
        params["PageSize"] = str(max(1, min(int(page_size), MAX_PAGE_SIZE)))

        yield from self._iter_2010_pages("Messages.json", "messages", params)

    def _iter_2010_list(self, path: str, key: str, params: dict[str, str]) -> Iterator[dict]:
        """Every item of a 2010-04-01 account list, following next_page_uri."""
        for page in self._iter_2010_pages(path, key, {**params, "PageSize": str(MAX_PAGE_SIZE)}):
            yield from (item for item in page if isinstance(item, dict))

    def _iter_2010_pages(self, path: str, key: str, params: dict[str, str]) -> Iterator[list]:
        """The pages (the `key` list of each) of a 2010-04-01 account list, following next_page_uri; a page
        that names itself as the next one is a MalformedResponse, not an endless loop."""
        url: str | None = f"{self._account_path}/{path}"
        query: dict[str, str] | None = params
        while url:
            data = self._get_json(url, query, require_list=key)
            yield data[key]
            nxt = data.get("next_page_uri")
            if not nxt or not isinstance(nxt, str):
                return
            nxt_url = self._rebase(self._api, nxt)
            if nxt_url == url:
                raise MalformedResponse(
                    "Twilio returned the same next_page_uri as the current page", method="GET", url=self._show(url)
                )
            url, query = nxt_url, None

    def owns_sender(self, sender: str) -> bool:
        """Whether the account holds `sender`: an IncomingPhoneNumber, or (5-6 digits) one of its SMS
        ShortCodes. Filtered by Twilio, so one small page whatever the account's size."""
        if sender.isdigit():
            items = self._iter_2010_list("SMS/ShortCodes.json", "short_codes", {"ShortCode": sender})
            return any(item.get("short_code") == sender for item in items)
        items = self._iter_2010_list("IncomingPhoneNumbers.json", "incoming_phone_numbers", {"PhoneNumber": sender})
        return any(item.get("phone_number") == sender for item in items)

    def list_service_phone_numbers(self, service_sid: str) -> list[str]:
        """E.164 numbers in a Messaging Service's sender pool (all pages)."""
        return self._list_service_senders(service_sid, "PhoneNumbers", "phone_numbers", "phone_number")

    def list_service_short_codes(self, service_sid: str) -> list[str]:
        """Short codes in a Messaging Service's sender pool (all pages)."""
        return self._list_service_senders(service_sid, "ShortCodes", "short_codes", "short_code")

    def _list_service_senders(self, service_sid: str, resource: str, key: str, field: str) -> list[str]:
        """One Messaging v1 pool subresource (PhoneNumbers, ShortCodes), every page, the `field` of each item."""
        url = f"{self._messaging}/v1/Services/{quote(service_sid, safe='')}/{resource}"
        return [item[field] for page in self._iter_v1_pages(self._messaging, url, key, MAX_PAGE_SIZE)
                for item in page if isinstance(item, dict) and isinstance(item.get(field), str)]

    def list_service_receiving_senders(self, service_sid: str) -> list[str]:
        """Every sender of a Messaging Service a reply can reach: its phone numbers, then its short codes.
        AlphaSenders are left out on purpose: an alphanumeric sender ID cannot receive messages."""
        return list(dict.fromkeys([*self.list_service_phone_numbers(service_sid),
                                   *self.list_service_short_codes(service_sid)]))

    def fetch_service(self, service_sid: str) -> dict | None:
        """GET a Messaging Service; None on 404."""
        url = f"{self._messaging}/v1/Services/{quote(service_sid, safe='')}"
        return self._get_json(url, None, require_key="sid", not_found_none=True)

    def create_export_job(
        self,
        *,
        start_day: date,
        end_day: date,
        friendly_name: str,
        email: str | None = None,
        webhook_url: str | None = None,
        webhook_method: str | None = None,
    ) -> dict:
        """POST a Bulk Export custom job for Messages (end day inclusive)."""
        data = {"StartDay": start_day.isoformat(), "EndDay": end_day.isoformat(), "FriendlyName": friendly_name}
        if email:
            data["Email"] = email
        if webhook_url:
            data["WebhookUrl"] = webhook_url
            data["WebhookMethod"] = webhook_method or "POST"
        url = f"{self._bulk}/v1/Exports/Messages/Jobs"
        return self._post_json(url, data, require_key="job_sid")

    def fetch_export_job(self, job_sid: str) -> dict:
        """GET a Bulk Export job (its `details` say which days are done)."""
        url = f"{self._bulk}/v1/Exports/Jobs/{quote(job_sid, safe='')}"
        return self._get_json(url, None, require_key="job_sid")

    def list_export_days(self) -> list[dict]:
        """Every Messages day file currently available (all pages)."""
        url = f"{self._bulk}/v1/Exports/Messages/Days"
        days: list[dict] = []
        for page in self._iter_v1_pages(self._bulk, url, "days", MAX_EXPORT_DAYS_PAGE_SIZE):
            days.extend(d for d in page if isinstance(d, dict))
        return days

    def iter_export_day(self, day: date) -> Iterator[dict]:
        """Records of one exported day: follow the 307 ourselves, gunzip, parse JSON lines (streaming)."""
        url = f"{self._bulk}/v1/Exports/Messages/Days/{day.isoformat()}"

        def locate() -> requests.Response | str:
            resp = self._send("GET", url)
            status = resp.status_code
            if status in _REDIRECTS:
                target = None
                try:
                    body = json.loads(resp.content) if resp.content else None
                    if isinstance(body, dict) and isinstance(body.get("redirect_to"), str):
                        target = body["redirect_to"]
                except ValueError:
                    pass
                target = target or resp.headers.get("Location")
                if not target:
                    raise _Failure(_MALFORMED, f"HTTP {status} without redirect_to or Location", status=status)
                return urljoin(url, target)
            if status == 200:
                return resp
            return self._non_success(resp, "GET", url)

        located = self._run_get(locate, url)
        if isinstance(located, str):
            target = located
            foreign = _origin(target) not in self._auth_origins
            session = self._plain_session if foreign else self._session

            def download() -> requests.Response:
                resp = self._send("GET", target, session=session, stream=True, limited=not foreign)
                if resp.status_code == 200:
                    return resp
                try:
                    resp.content  # small error body; read it so the connection goes back to the pool
                finally:
                    resp.close()
                if foreign and resp.status_code in (401, 403, 404):
                    raise TwilioApiError(
                        f"the download link for export day {day.isoformat()} was refused; it may have expired",
                        status=resp.status_code,
                        method="GET",
                        url=self._show(target.split("?", 1)[0]),
                    )
                return self._non_success(resp, "GET", target)

            resp = self._run_get(download, target)
            where = target.split("?", 1)[0]  # presigned query strings are credentials too
        else:
            resp, where = located, url
        return self._iter_jsonl(resp, day, where)

    # --- create -----------------------------------------------------------------------------
    def _create_once(self, params: Mapping[str, Any], started: datetime, attempt: int) -> CreateResult:
        if self._bucket is not None:
            self._bucket.take()
        prepared = requests.PreparedRequest()
        prepared.method = "POST"
        prepared.url = self._messages_url
        prepared.headers = headers = self._post_headers.copy()
        prepared.body = body = _form_body(params)
        headers["Content-Length"] = str(len(body))
        try:
            resp = self._send("POST", self._messages_url, prepared=prepared)
        except _Failure as f:
            if f.kind == _NOT_SENT:
                raise
            return CreateResult(
                AMBIGUOUS, None, None,
                f"{f.detail}; the request was sent, Twilio may have created the message",
                None, attempt, started,
            )
        status = resp.status_code
        if 200 <= status < 300:
            try:
                body = json.loads(resp.content)
            except ValueError:
                return CreateResult(
                    AMBIGUOUS, None, None,
                    f"HTTP {status} with a body that is not valid JSON; Twilio may have created the message",
                    status, attempt, started,
                )
            if isinstance(body, dict):
                sid = body.get("sid")
                if sid and isinstance(sid, str):
                    return CreateResult(ACCEPTED, body, None, None, status, attempt, started)
            return CreateResult(
                AMBIGUOUS, None, None,
                f"HTTP {status} without a message sid; Twilio may have created the message",
                status, attempt, started,
            )
        code, message, more_info = self._error_fields(resp)
        if status >= 500:
            return CreateResult(
                AMBIGUOUS, None, code,
                f"HTTP {status}: {message}; Twilio may have created the message",
                status, attempt, started,
            )
        if status in (401, 403):
            raise self._rejected(resp, code, message, more_info, "POST", self._messages_url)
        if status == 429 or code in _NOT_PROCESSED_CODES:
            if status != 429:
                self._limiter.on_throttle()
            raise _Failure(
                _THROTTLED, f"HTTP {status}: {message}", status=status, code=code, more_info=more_info,
                retry_after=_retry_after_s(resp.headers.get("Retry-After")),
            )
        return CreateResult(REFUSED, None, code, message, status, attempt, started)

    # --- generic requests ---------------------------------------------------------------------
    def _send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        session: requests.Session | None = None,
        stream: bool = False,
        limited: bool = True,
        prepared: requests.PreparedRequest | None = None,
    ) -> requests.Response:
        """One HTTP exchange through the limiter; transport errors become `_Failure` or TwilioApiError."""
        if limited:
            self._limiter.acquire()
        foreign = session is self._plain_session
        ok = throttled = False
        t0 = time.perf_counter()
        try:
            try:
                if prepared is not None:
                    resp = self._session.send(prepared, **self._post_kwargs)
                else:
                    resp = (session or self._session).request(
                        method, url, params=params, data=data, timeout=self._timeout,
                        allow_redirects=False, stream=stream,
                    )
            except requests.RequestException as exc:
                if self._trace is not None:
                    self._emit(
                        f"HTTP {method} {self._show(url, foreign)} -> {type(exc).__name__} "
                        f"after {(time.perf_counter() - t0) * 1000:.1f} ms"
                    )
                raise self._transport_failure(exc, method, url, foreign) from None
            status = resp.status_code
            throttled = status == 429
            ok = status < 500 and not throttled
            if self._trace is not None:
                rid = resp.headers.get("Twilio-Request-Id") or "-"
                self._emit(
                    f"HTTP {method} {self._show(resp.url, foreign)} -> {status} "
                    f"in {(time.perf_counter() - t0) * 1000:.1f} ms (request id {rid})"
                )
            return resp
        finally:
            with self._count_lock:
                self._requests += 1
                if throttled:
                    self._throttled += 1
            if limited:
                self._limiter.release(ok=ok, throttled=throttled, latency_s=time.perf_counter() - t0 if ok else None)

    def _transport_failure(
        self, exc: requests.RequestException, method: str, url: str, foreign: bool = False
    ) -> Exception:
        text = self._redactor.redact(f"{type(exc).__name__}: {exc}")
        if foreign and "?" in url:  # a presigned download link's query is a credential too
            text = text.replace(url.split("?", 1)[1], "[REDACTED]")
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return _Failure(_NOT_SENT, f"connect timeout ({text})")
        if isinstance(exc, requests.exceptions.ConnectionError):
            reason = exc.args[0] if exc.args else None
            if isinstance(reason, MaxRetryError):
                reason = reason.reason
            if isinstance(exc, requests.exceptions.ProxyError) or isinstance(
                reason, (NewConnectionError, ConnectTimeoutError)
            ):
                return _Failure(_NOT_SENT, f"could not connect ({text})")
            if isinstance(exc, requests.exceptions.SSLError):
                inner = reason.args[0] if isinstance(reason, Exception) and reason.args else reason
                if isinstance(inner, ssl.SSLCertVerificationError) or isinstance(reason, ssl.SSLCertVerificationError):
                    return _Failure(_NOT_SENT, f"TLS certificate rejected ({text})")
            return _Failure(_AFTER_SENT, f"connection lost after sending ({text})")
        if isinstance(
            exc,
            (
                requests.exceptions.ReadTimeout,
                requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError,
            ),
        ):
            label = "read timeout" if isinstance(exc, requests.exceptions.ReadTimeout) else "incomplete response"
            return _Failure(_AFTER_SENT, f"{label} ({text})")
        return TwilioApiError(f"request could not be made: {text}", method=method, url=self._show(url, foreign))

    def _get_json(
        self,
        url: str,
        params: Mapping[str, str] | None,
        *,
        require_key: str | None = None,
        require_list: str | None = None,
        not_found_none: bool = False,
        probe: bool = False,
    ) -> Any:
        """GET a JSON object (only 200 is success), retrying per the rules; validates required fields."""

        def attempt() -> Any:
            resp = self._send("GET", url, params=params)
            status = resp.status_code
            if status != 200:
                if status == 404 and not_found_none:
                    return None
                if 200 <= status < 300:
                    raise _Failure(_MALFORMED, f"HTTP {status} where 200 was expected", status=status)
                return self._non_success(resp, "GET", url, probe=probe)
            return self._parse_object(resp, require_key, require_list)

        return self._run_get(attempt, url)

    def _post_json(self, url: str, data: Mapping[str, str], *, require_key: str) -> dict:
        """POST that must not be repeated once sent: 5xx / lost answers raise AmbiguousRequest."""

        def attempt() -> dict:
            try:
                resp = self._send("POST", url, data=data)
            except _Failure as f:
                if f.kind == _NOT_SENT:
                    raise
                raise AmbiguousRequest(
                    f"{f.detail}; the request was sent, Twilio may have acted on it",
                    method="POST", url=self._show(url),
                ) from None
            status = resp.status_code
            if 200 <= status < 300:
                try:
                    return self._parse_object(resp, require_key, None)
                except _Failure as f:
                    raise MalformedResponse(
                        f"{f.detail}; Twilio may have acted on the request", status=status, method="POST",
                        url=self._show(url),
                    ) from None
            if status >= 500:
                code, message, more_info = self._error_fields(resp)
                raise AmbiguousRequest(
                    f"Twilio answered {message}; it may have acted on the request",
                    status=status, code=code, more_info=more_info, method="POST", url=self._show(url),
                )
            return self._non_success(resp, "POST", url)

        return self._with_retries(attempt, None, "POST", url, None)

    def _run_get(self, attempt: Callable[[], _T], url: str) -> _T:
        try:
            return attempt()
        except _Failure as exc:
            first = exc
        return self._with_retries(attempt, first, "GET", url, None)

    def _parse_object(self, resp: requests.Response, require_key: str | None, require_list: str | None) -> dict:
        status = resp.status_code
        try:
            body = json.loads(resp.content)
        except ValueError:
            ctype = resp.headers.get("Content-Type", "?")
            raise _Failure(_MALFORMED, f"HTTP {status} with a body that is not valid JSON ({ctype})", status=status)
        if not isinstance(body, dict):
            raise _Failure(_MALFORMED, f"HTTP {status} with JSON that is not an object", status=status)
        if require_key and not body.get(require_key):
            if "code" in body and "message" in body:
                raise _Failure(
                    _MALFORMED,
                    self._redactor.redact(f"HTTP {status} carrying an error body: {body.get('code')} {body.get('message')}"),
                    status=status, code=_as_int(body.get("code")),
                )
            raise _Failure(_MALFORMED, f"HTTP {status} without the required field '{require_key}'", status=status)
        if require_list and not isinstance(body.get(require_list), list):
            raise _Failure(_MALFORMED, f"HTTP {status} without the list '{require_list}'", status=status)
        return body

    def _error_fields(self, resp: requests.Response) -> tuple[int | None, str, str | None]:
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
        redact = self._redactor.redact
        return code, redact(message), (redact(more_info) if more_info else None)

    def _non_success(self, resp: requests.Response, method: str, url: str, *, probe: bool = False) -> Any:
        """Raise for a non-2xx answer: retriable ones as `_Failure`, the rest as typed errors."""
        status = resp.status_code
        code, message, more_info = self._error_fields(resp)
        if status in (401, 403):
            raise self._rejected(resp, code, message, more_info, method, url, probe=probe)
        if status == 429 or code == TOO_MANY_REQUESTS_CODE:
            raise _Failure(
                _THROTTLED, f"HTTP {status}: {message}", status=status, code=code, more_info=more_info,
                retry_after=_retry_after_s(resp.headers.get("Retry-After")),
            )
        if status >= 500:
            raise _Failure(
                _SERVER, f"HTTP {status}: {message}", status=status, code=code, more_info=more_info,
                retry_after=_retry_after_s(resp.headers.get("Retry-After")),
            )
        raise TwilioApiError(
            message, status=status, code=code, more_info=more_info, method=method, url=self._show(url)
        )

    def _rejected(
        self, resp: requests.Response, code: int | None, message: str, more_info: str | None,
        method: str, url: str, *, probe: bool = False,
    ) -> CredentialsRejected:
        c = self._credentials
        who = f"API key {c.api_key_sid} of account {c.account_sid}" if c.api_key_sid else f"account {c.account_sid}"
        text = f"Twilio rejected the credentials for {who}: {message}"
        if resp.status_code == 403 and probe:
            text += " (Twilio test credentials get 403 here: set the channel's connectivity_test to false)"
        return CredentialsRejected(
            self._redactor.redact(text), status=resp.status_code, code=code, more_info=more_info,
            method=method, url=self._show(url),
        )

    # --- retry loop (slow path) -------------------------------------------------------------
    def _with_retries(
        self,
        attempt: Callable[[], _T],
        first: _Failure | None,
        method: str,
        url: str,
        counter: list[int] | None,
    ) -> _T:
        """Repeat `attempt` after a retriable failure, pacing with tenacity.

        `first` is the failure the caller already saw; it is replayed as tenacity's first outcome so
        backoff and stop decisions count it without a new request. Throttling stops when the waits
        reach the throttle budget; the other kinds after `max_attempts` failures.
        """
        settings = self._retry
        budget = max(0.0, settings.throttle_budget_s)
        pending = [first] if first is not None else []
        other_failures = [0]
        counted = counter if counter is not None else [0 if first is None else 1]

        def run() -> _T:
            if pending:
                raise pending.pop()
            if counter is None:
                counted[0] += 1
            return attempt()

        def wait(rs: RetryCallState) -> float:
            exc = rs.outcome.exception()
            if getattr(exc, "kind", None) == _THROTTLED:
                remaining = budget - rs.idle_for
                if remaining <= 1e-6:
                    return 0.0
                if exc.retry_after is not None:
                    delay = max(exc.retry_after, settings.min_delay_s)
                elif exc.status == 429:
                    delay = self._throttle_backoff(rs)
                else:  # 21611, the sender's queue is full: it drains at the sender's rate, not in ms
                    delay = self._backoff(rs)
                return min(max(delay, _THROTTLE_FLOOR_S), remaining)
            if exc.retry_after is not None:
                return min(exc.retry_after, settings.max_delay_s)
            return self._backoff(rs)

        def stop(rs: RetryCallState) -> bool:
            exc = rs.outcome.exception()
            if exc.kind == _THROTTLED:
                return budget - rs.idle_for <= 1e-6
            other_failures[0] += 1
            return other_failures[0] >= settings.max_attempts

        before_sleep = None
        if self._trace is not None:
            def before_sleep(rs: RetryCallState) -> None:
                exc = rs.outcome.exception()
                self._emit(
                    f"retry {method} {self._show(url)} in {rs.upcoming_sleep:.2f} s after {exc.detail} "
                    f"(attempt {rs.attempt_number})"
                )

        retrying = Retrying(
            sleep=self._sleep,
            stop=stop,
            wait=wait,
            retry=retry_if_exception_type(_Failure),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(run)
        except _Failure as final:
            raise self._exhausted(final, method, url, counted[0], retrying.statistics.get("idle_for", 0.0)) from None

    def _exhausted(self, f: _Failure, method: str, url: str, attempts: int, waited: float) -> TwilioApiError:
        shown = self._show(url)
        detail = self._redactor.redact(f.detail)
        if f.kind == _MALFORMED:
            return MalformedResponse(detail, status=f.status, code=f.code, method=method, url=shown, attempts=attempts)
        if f.kind == _THROTTLED:
            text = f"Twilio kept throttling the request ({detail}) for {waited:.0f} s, the channel's throttle budget"
        elif f.kind == _NOT_SENT:
            text = f"Twilio could not be reached: {detail}"
        else:
            text = f"Twilio did not answer usefully: {detail}"
        return TwilioUnavailable(
            text, status=f.status, code=f.code, more_info=f.more_info, method=method, url=shown, attempts=attempts
        )

    # --- paging and downloads ---------------------------------------------------------------
    def _iter_v1_pages(self, base: str, url: str, key: str, page_size: int) -> Iterator[list]:
        """v1 list envelope: `{key: [...], meta: {next_page_url}}`, absolute URLs rebased on `base`."""
        query: dict[str, str] | None = {"PageSize": str(page_size)}
        current: str | None = url
        while current:
            data = self._get_json(current, query, require_list=key)
            yield data[key]
            meta = data.get("meta")
            nxt = meta.get("next_page_url") if isinstance(meta, dict) else None
            if not nxt or not isinstance(nxt, str):
                return
            nxt_url = self._rebase(base, nxt)
            if nxt_url == current:
                raise MalformedResponse(
                    "Twilio returned the same next_page_url as the current page", method="GET", url=self._show(current)
                )
            current, query = nxt_url, None

    @staticmethod
    def _rebase(base: str, uri: str) -> str:
        """Resolve a paging link against our configured base, so credentials only go where configured."""
        p = urlsplit(uri)
        path = p.path if p.path.startswith("/") else "/" + p.path
        if p.scheme and p.netloc:
            b = urlsplit(base)
            if (p.scheme.lower(), p.netloc.lower()) == (b.scheme.lower(), b.netloc.lower()):
                return uri
            return urlunsplit((b.scheme, b.netloc, path, p.query, ""))
        return base + (path + ("?" + p.query if p.query else ""))

    def _iter_jsonl(self, resp: requests.Response, day: date, where: str) -> Iterator[dict]:
        """Stream a (possibly gzip, possibly multi-member) JSON Lines body into dicts."""
        shown = self._show(where)
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
                rec = self._json_line(raw, line_no, day, shown)
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
                rec = self._json_line(buf, line_no, day, shown)
                buf = b""
                if rec is not None:
                    yield rec
        except zlib.error as exc:
            raise MalformedResponse(
                f"export day {day.isoformat()} is not a readable gzip file: {exc}", method="GET", url=shown
            ) from None
        except requests.RequestException as exc:
            raise TwilioUnavailable(
                self._redactor.redact(f"download of export day {day.isoformat()} broke off: {type(exc).__name__}: {exc}"),
                method="GET", url=shown,
            ) from None
        finally:
            resp.close()

    @staticmethod
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

    # --- text hygiene -----------------------------------------------------------------------
    def _show(self, url: str, foreign: bool = False) -> str:
        if foreign:
            url = url.split("?", 1)[0]
        return self._redactor.redact(_display_url(url))

    def _emit(self, line: str) -> None:
        self._trace(self._redactor.redact(line))

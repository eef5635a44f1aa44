"""The Twilio endpoints the pipeline uses, as methods of one thread-safe client per channel.

Each method builds its URL and says what a usable answer is; the exchange itself and the sorting of
failures live in `transport.py`, when to try again in `retry.py` (its docstring holds the rules), and
the Bulk Export day-file decoder in `export_stream.py`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import requests

from twilio_pipeline.dates import format_rfc3339
from twilio_pipeline.twilio.account import Endpoints, TwilioCredentials
from twilio_pipeline.twilio.errors import (
    AmbiguousRequest,
    MalformedResponse,
    TwilioApiError,
    TwilioUnavailable,
)
from twilio_pipeline.twilio.export_stream import iter_export_records
from twilio_pipeline.twilio.redact import Redactor
from twilio_pipeline.twilio.retry import RetryPolicy, RetrySettings
from twilio_pipeline.twilio.throttle import AdaptiveLimiter
from twilio_pipeline.twilio.transport import (
    MALFORMED,
    NOT_PROCESSED_CODES,
    NOT_SENT,
    REDIRECTS,
    THROTTLED,
    Failure,
    Transport,
    retry_after_s,
)

API_VERSION = "2010-04-01"
MAX_PAGE_SIZE = 1000
MAX_EXPORT_DAYS_PAGE_SIZE = 400

ACCEPTED = "accepted"
REFUSED = "refused"
AMBIGUOUS = "ambiguous"
_DEFAULT_RETRY = RetrySettings()
_DEFAULT_ENDPOINTS = Endpoints()


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


class TwilioClient:
    """Thread-safe Twilio REST client for one channel (one session, limiter and trace)."""

    def __init__(
        self,
        credentials: TwilioCredentials,
        *,
        endpoints: Endpoints = _DEFAULT_ENDPOINTS,
        retry: RetrySettings = _DEFAULT_RETRY,
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
        self._api = endpoints.api_base.rstrip("/")
        self._bulk = endpoints.bulkexports_base.rstrip("/")
        self._messaging = endpoints.messaging_base.rstrip("/")
        self._account_path = f"{self._api}/{API_VERSION}/Accounts/{quote(credentials.account_sid, safe='')}"
        self._messages_url = f"{self._account_path}/Messages.json"
        c = credentials
        self._http = Transport(
            username=c.username,
            password=password,
            principal=(f"API key {c.api_key_sid} of account {c.account_sid}" if c.api_key_sid
                       else f"account {c.account_sid}"),
            redactor=Redactor.for_basic_auth(c.username, password, c.auth_token, c.api_key_secret),
            auth_bases=(self._api, self._bulk, self._messaging),
            post_url=self._messages_url,
            max_concurrency=max_concurrency,
            requests_per_second=requests_per_second,
            timeout=(connect_timeout_s, read_timeout_s),
            trace=trace,
        )
        self._retry = RetryPolicy(retry, self._http, sleep)

    # --- properties ---------------------------------------------------------------------------
    @property
    def account_sid(self) -> str:
        return self._credentials.account_sid

    @property
    def request_count(self) -> int:
        return self._http.request_count

    @property
    def throttled_count(self) -> int:
        return self._http.throttled_count

    @property
    def limiter(self) -> AdaptiveLimiter:
        return self._http.limiter

    @property
    def redactor(self) -> Redactor:
        return self._http.redactor

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TwilioClient:
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
        started = datetime.now(UTC)
        try:
            return self._create_once(params, started, 1)
        except Failure as exc:
            first = exc
        attempts = [1]

        def attempt() -> CreateResult:
            if proceed is not None and not proceed():
                raise TwilioUnavailable("not retried: the sender stopped sending", method="POST",
                                        url=self._http.show(self._messages_url), attempts=attempts[0])
            attempts[0] += 1
            return self._create_once(params, started, attempts[0])

        return self._retry.retry(attempt, first, "POST", self._messages_url, attempts)

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
                date_sent = (date_sent.astimezone(UTC) if date_sent.tzinfo else date_sent).date()
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
                    "Twilio returned the same next_page_uri as the current page", method="GET", url=self._http.show(url)
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
            resp = self._http.send("GET", url)
            status = resp.status_code
            if status in REDIRECTS:
                target = None
                try:
                    body = json.loads(resp.content) if resp.content else None
                    if isinstance(body, dict) and isinstance(body.get("redirect_to"), str):
                        target = body["redirect_to"]
                except ValueError:
                    pass
                target = target or resp.headers.get("Location")
                if not target:
                    raise Failure(MALFORMED, f"HTTP {status} without redirect_to or Location", status=status)
                return urljoin(url, target)
            if status == 200:
                return resp
            return self._http.non_success(resp, "GET", url)

        located = self._retry.call(locate, "GET", url)
        if isinstance(located, str):
            target = located
            foreign = self._http.is_foreign(target)

            def download() -> requests.Response:
                resp = self._http.send("GET", target, foreign=foreign, stream=True, limited=not foreign)
                if resp.status_code == 200:
                    return resp
                try:
                    _ = resp.content  # small error body; read it so the connection goes back to the pool
                finally:
                    resp.close()
                if foreign and resp.status_code in (401, 403, 404):
                    raise TwilioApiError(
                        f"the download link for export day {day.isoformat()} was refused; it may have expired",
                        status=resp.status_code,
                        method="GET",
                        url=self._http.show(target.split("?", 1)[0]),
                    )
                return self._http.non_success(resp, "GET", target)

            resp = self._retry.call(download, "GET", target)
            where = target.split("?", 1)[0]  # presigned query strings are credentials too
        else:
            resp, where = located, url
        return iter_export_records(resp, day, self._http.show(where), self._http.redactor)

    # --- create -----------------------------------------------------------------------------
    def _create_once(self, params: Mapping[str, Any], started: datetime, attempt: int) -> CreateResult:
        try:
            resp = self._http.post_form(params)
        except Failure as f:
            if f.kind == NOT_SENT:
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
        code, message, more_info = self._http.error_fields(resp)
        if status >= 500:
            return CreateResult(
                AMBIGUOUS, None, code,
                f"HTTP {status}: {message}; Twilio may have created the message",
                status, attempt, started,
            )
        if status in (401, 403):
            raise self._http.rejected(resp, code, message, more_info, "POST", self._messages_url)
        if status == 429 or code in NOT_PROCESSED_CODES:
            if status != 429:
                self._http.limiter.on_throttle()
            raise Failure(
                THROTTLED, f"HTTP {status}: {message}", status=status, code=code, more_info=more_info,
                retry_after=retry_after_s(resp.headers.get("Retry-After")),
            )
        return CreateResult(REFUSED, None, code, message, status, attempt, started)

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
            resp = self._http.send("GET", url, params=params)
            status = resp.status_code
            if status != 200:
                if status == 404 and not_found_none:
                    return None
                if 200 <= status < 300:
                    raise Failure(MALFORMED, f"HTTP {status} where 200 was expected", status=status)
                return self._http.non_success(resp, "GET", url, probe=probe)
            return self._http.parse_object(resp, require_key, require_list)

        return self._retry.call(attempt, "GET", url)

    def _post_json(self, url: str, data: Mapping[str, str], *, require_key: str) -> dict:
        """POST that must not be repeated once sent: 5xx / lost answers raise AmbiguousRequest."""

        def attempt() -> dict:
            try:
                resp = self._http.send("POST", url, data=data)
            except Failure as f:
                if f.kind == NOT_SENT:
                    raise
                raise AmbiguousRequest(
                    f"{f.detail}; the request was sent, Twilio may have acted on it",
                    method="POST", url=self._http.show(url),
                ) from None
            status = resp.status_code
            if 200 <= status < 300:
                try:
                    return self._http.parse_object(resp, require_key, None)
                except Failure as f:
                    raise MalformedResponse(
                        f"{f.detail}; Twilio may have acted on the request", status=status, method="POST",
                        url=self._http.show(url),
                    ) from None
            if status >= 500:
                code, message, more_info = self._http.error_fields(resp)
                raise AmbiguousRequest(
                    f"Twilio answered {message}; it may have acted on the request",
                    status=status, code=code, more_info=more_info, method="POST", url=self._http.show(url),
                )
            return self._http.non_success(resp, "POST", url)

        return self._retry.retry(attempt, None, "POST", url, None)

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
                    "Twilio returned the same next_page_url as the current page", method="GET", url=self._http.show(current)
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

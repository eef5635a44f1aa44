"""The sandbox's HTTP face: routes, auth, the concurrency limit, injected faults, latency, stats.

All three Twilio base URLs are served on one port and told apart by path: `/2010-04-01/...` (api),
`/v1/Services/...` (messaging), `/v1/Exports/...` (bulkexports). Admin endpoints live under
`/_sandbox/` (same Basic auth; never throttled, faulted, delayed or counted, so tests can watch
without disturbing). Export day files are downloaded from `/_sandbox/exports/...` with a signed
link instead of Basic auth, as S3 links are.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import os
import random
import re
import sys
import time
from collections.abc import Callable
from urllib.parse import quote, urlencode

from twilio_pipeline.sandbox.config import SandboxConfig
from twilio_pipeline.sandbox.errors import (
    ApiError,
    bad_request,
    method_not_allowed,
    not_found,
    server_error,
    too_many_requests,
    unauthorized,
)
from twilio_pipeline.sandbox.http import Connection, Request, Response
from twilio_pipeline.sandbox.model import MESSAGE_SID, Model, _phone
from twilio_pipeline.sandbox.store import Store
from twilio_pipeline.sandbox.timefmt import iso8601, iso8601_ms, iso_day, parse_date_filter, rfc2822

FIXED_CREATED = 1704067200.0  # 2024-01-01: creation date shown for the built-in numbers and service
_API, _ADMIN, _DOWNLOAD = "api", "admin", "download"


_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)


def _dumps(obj) -> bytes:
    return _ENCODER.encode(obj).encode("utf-8")


def _number_sid(prefix: str, number: str) -> str:
    return prefix + hashlib.md5(number.encode()).hexdigest()


def _int_param(params: dict, name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if not raw or raw[0] == "":
        return default
    try:
        value = int(raw[0])
    except ValueError:
        raise bad_request(20001, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise bad_request(20001, f"{name} must be between {low} and {high}")
    return value


class SandboxApp:
    def __init__(self, config: SandboxConfig, store: Store | None = None):
        self.config = config
        self.store = store
        self.model = Model(config, journal=store.append if store else None)
        self.connections: set[Connection] = set()
        self.rng = random.Random(config.seed)
        self.in_flight = 0
        self._auth_cache: dict[str, str] = {}  # Authorization header -> account SID, "" when refused
        self._subaccount_sids = frozenset(sid for sid, _ in config.subaccounts)
        self._download_key = hashlib.sha256(("download:" + config.auth_token).encode()).digest()
        self._log: list[str] = []
        self._log_second = 0
        self._log_stamp = ""
        self.started = time.time()
        self.reset_stats()
        self.routes = self._routes()

    # -- stats ---------------------------------------------------------------------------------
    def reset_stats(self) -> None:
        self.requests_total = 0
        self.requests_by_endpoint: dict[str, int] = {}
        self.responses_by_status: dict[str, int] = {}
        self.errors_by_code: dict[str, int] = {}
        self.throttled_429 = 0
        self.concurrency_429 = 0
        self.faults_injected = {"429": 0, "500": 0, "reset": 0, "timeout": 0}
        self.max_in_flight = 0

    def stats(self) -> dict:
        model = self.model
        inbound = sum(1 for m in model.messages.values() if m.direction == "inbound")
        return {
            "requests_total": self.requests_total,
            "requests_by_endpoint": dict(self.requests_by_endpoint),
            "throttled_429": self.throttled_429,
            "messages_created_by_to": dict(model.created_by_to),
            "concurrency_429": self.concurrency_429,
            "faults_injected": dict(self.faults_injected),
            "responses_by_status": dict(self.responses_by_status),
            "errors_by_code": dict(self.errors_by_code),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "messages_total": len(model.messages),
            "messages_inbound": inbound,
            "messages_outbound": len(model.messages) - inbound,
            "pid": os.getpid(),
            "store": str(self.store.path) if self.store else None,
            "now": iso8601(model.now()),
            "clock_offset_s": model.clock_offset,
            "started_at": iso8601(self.started),
        }

    # -- routing -------------------------------------------------------------------------------
    def _routes(self) -> list[tuple[re.Pattern, str, dict[str, tuple[str, Callable]]]]:
        r = re.compile
        return [
            (r(r"^/2010-04-01/Accounts/([^/]+)/Messages\.json$"), _API,
             {"POST": ("POST Messages", self.create_message), "GET": ("GET Messages", self.list_messages)}),
            (r(r"^/2010-04-01/Accounts/([^/]+)/Messages/([^/]+)\.json$"), _API,
             {"GET": ("GET Message", self.fetch_message)}),
            (r(r"^/2010-04-01/Accounts/([^/]+)/IncomingPhoneNumbers\.json$"), _API,
             {"GET": ("GET IncomingPhoneNumbers", self.list_numbers),
              "POST": ("POST IncomingPhoneNumbers", self.provision_number)}),
            (r(r"^/2010-04-01/Accounts/([^/]+)/IncomingPhoneNumbers/([^/]+)\.json$"), _API,
             {"DELETE": ("DELETE IncomingPhoneNumber", self.release_number)}),
            (r(r"^/2010-04-01/Accounts/([^/]+)/SMS/ShortCodes\.json$"), _API,
             {"GET": ("GET ShortCodes", self.list_short_codes)}),
            (r(r"^/2010-04-01/Accounts/([^/]+)\.json$"), _API,
             {"GET": ("GET Account", self.fetch_account)}),
            (r(r"^/v1/Services$"), _API, {"GET": ("GET Services", self.list_services)}),
            (r(r"^/v1/Services/([^/]+)$"), _API, {"GET": ("GET Service", self.fetch_service)}),
            (r(r"^/v1/Services/([^/]+)/PhoneNumbers$"), _API,
             {"GET": ("GET ServicePhoneNumbers", self.list_service_numbers)}),
            (r(r"^/v1/Services/([^/]+)/PhoneNumbers/([^/]+)$"), _API,
             {"GET": ("GET ServicePhoneNumber", self.fetch_service_number)}),
            (r(r"^/v1/Services/([^/]+)/ShortCodes$"), _API,
             {"GET": ("GET ServiceShortCodes", self.list_service_short_codes)}),
            (r(r"^/v1/Services/([^/]+)/ShortCodes/([^/]+)$"), _API,
             {"GET": ("GET ServiceShortCode", self.fetch_service_short_code)}),
            (r(r"^/v1/Services/([^/]+)/AlphaSenders$"), _API,
             {"GET": ("GET ServiceAlphaSenders", self.list_service_alpha_senders)}),
            (r(r"^/v1/Services/([^/]+)/AlphaSenders/([^/]+)$"), _API,
             {"GET": ("GET ServiceAlphaSender", self.fetch_service_alpha_sender)}),
            (r(r"^/v1/Exports/Jobs/([^/]+)$"), _API,
             {"GET": ("GET ExportJob", self.fetch_job), "DELETE": ("DELETE ExportJob", self.delete_job)}),
            (r(r"^/v1/Exports/([^/]+)/Jobs$"), _API,
             {"POST": ("POST ExportJobs", self.create_job), "GET": ("GET ExportJobs", self.list_jobs)}),
            (r(r"^/v1/Exports/([^/]+)/Days$"), _API, {"GET": ("GET ExportDays", self.list_days)}),
            (r(r"^/v1/Exports/([^/]+)/Days/([^/]+)$"), _API, {"GET": ("GET ExportDay", self.fetch_day)}),
            (r(r"^/v1/Exports/([^/]+)$"), _API, {"GET": ("GET Export", self.fetch_export)}),
            (r(r"^/_sandbox/exports/([^/]+)/(\d{4}-\d{2}-\d{2})\.json\.gz$"), _DOWNLOAD,
             {"GET": ("GET ExportDayFile", self.download_day)}),
            (r(r"^/_sandbox/inbound$"), _ADMIN, {"POST": ("admin inbound", self.admin_inbound)}),
            (r(r"^/_sandbox/clock$"), _ADMIN,
             {"POST": ("admin clock", self.admin_clock), "GET": ("admin clock", self.admin_clock)}),
            (r(r"^/_sandbox/stats$"), _ADMIN, {"GET": ("admin stats", self.admin_stats)}),
            (r(r"^/_sandbox/reset$"), _ADMIN, {"POST": ("admin reset", self.admin_reset)}),
            (r(r"^/_sandbox/messages$"), _ADMIN, {"GET": ("admin messages", self.admin_messages)}),
        ]

    def _route(self, request: Request):
        for pattern, kind, methods in self.routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            entry = methods.get(request.method)
            if entry is None:
                return f"{request.method} unsupported", kind, None, match.groups()
            return entry[0], kind, entry[1], match.groups()
        return "unknown", _API, None, ()

    # -- the request pipeline ------------------------------------------------------------------
    def handle(self, request: Request, conn: Connection):
        """Entry point from the HTTP layer: a Response, an awaitable of one, or None (reset)."""
        started = time.perf_counter()
        label, kind, fn, args = self._route(request)
        if kind == _ADMIN:
            if not self._authorized(request):
                return self._error(unauthorized())
            return self._run(fn, request, args)
        self.requests_total += 1
        self.requests_by_endpoint[label] = self.requests_by_endpoint.get(label, 0) + 1
        if kind == _DOWNLOAD:
            return self._finish(request, self._run(fn, request, args), started)
        if fn is None:
            error = not_found(request.path) if label == "unknown" else method_not_allowed(request.method)
            return self._finish(request, self._error(error), started)
        if not self._authorized(request):
            return self._finish(request, self._error(unauthorized()), started)
        cfg = self.config
        if self.in_flight >= cfg.max_concurrency:
            self.throttled_429 += 1
            self.concurrency_429 += 1
            return self._finish(request, self._error(too_many_requests()), started)
        fault = self._draw_fault()
        if fault == "429":
            self.throttled_429 += 1
            return self._finish(request, self._error(too_many_requests()), started)
        if fault == "reset":
            self._access(request, "RST", started)
            conn.reset()
            return None
        if cfg.latency_s <= 0 and fault is None:
            self.in_flight += 1
            if self.in_flight > self.max_in_flight:
                self.max_in_flight = self.in_flight
            try:
                return self._finish(request, self._run(fn, request, args), started)
            finally:
                self.in_flight -= 1
        # counted in flight now, not when the task first runs: requests read in the same loop
        # iteration must see each other, or a burst would slip past the limit
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._slow(request, conn, label, fn, args, fault, started, loop, loop.time()))
        task.add_done_callback(self._release)
        return task

    def _release(self, _task) -> None:
        self.in_flight -= 1

    async def _slow(self, request, conn, label, fn, args, fault, started, loop, arrived):
        """A request that waits: the simulated latency, a 500, or a stall.

        The work is done on arrival and the latency counts from arrival, so a burst of requests
        all answer `latency` later instead of queueing behind each other's processing.
        """
        cfg = self.config
        if fault is None:
            response = self._run(fn, request, args)
        else:
            if label == "POST Messages" and self.rng.random() < cfg.fault_after_create:
                self._run(fn, request, args)  # the message exists; the client will not know
            if fault == "timeout":
                await asyncio.sleep(cfg.timeout_s)
                self._access(request, "TIMEOUT", started)
                conn.abort()
                return None
            response = self._error(server_error())
        remaining = arrived + cfg.latency_s - loop.time()
        if remaining > 0:
            await asyncio.sleep(remaining)
        return self._finish(request, response, started)

    def _draw_fault(self) -> str | None:
        cfg = self.config
        total = cfg.fault_429_rate + cfg.fault_500_rate + cfg.fault_reset_rate + cfg.fault_timeout_rate
        if total <= 0:
            return None
        u = self.rng.random()
        for name, rate in (("429", cfg.fault_429_rate), ("500", cfg.fault_500_rate),
                           ("reset", cfg.fault_reset_rate), ("timeout", cfg.fault_timeout_rate)):
            if u < rate:
                self.faults_injected[name] += 1
                return name
            u -= rate
        return None

    def _run(self, fn, request: Request, args) -> Response:
        try:
            if fn is None:
                raise not_found(request.path)
            self.model.settle()
            return fn(request, *args)
        except ApiError as error:
            return self._error(error)

    def _error(self, error: ApiError) -> Response:
        return Response(error.status, _dumps(error.body()), headers=error.headers or None)

    def _finish(self, request: Request, response: Response, started: float) -> Response:
        status = str(response.status)
        self.responses_by_status[status] = self.responses_by_status.get(status, 0) + 1
        if response.status >= 400 and response.body[:8] == b'{"code":':
            code = str(json.loads(response.body)["code"])
            self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1
        headers = response.headers or {}
        headers["Twilio-Concurrent-Requests"] = str(self.in_flight)
        response.headers = headers
        self._access(request, status, started)
        return response

    def _access(self, request: Request, status: str, started: float) -> None:
        if self.config.access_log:
            # the path and query only: credentials travel in the Authorization header, never here
            now = time.time()
            if int(now) != self._log_second:
                self._log_second = int(now)
                self._log_stamp = time.strftime("%H:%M:%S", time.localtime(now))
            # a download link's signature is a credential: logged without its query
            target = request.path if request.path.startswith("/_sandbox/exports/") else request.target
            self._log.append(
                f"{self._log_stamp} {request.method} {target} {status} "
                f"{(time.perf_counter() - started) * 1000:.1f}ms\n"
            )

    def flush_log(self) -> None:
        if self._log:
            lines, self._log = self._log, []
            try:
                sys.stderr.write("".join(lines))
                sys.stderr.flush()
            except (OSError, ValueError):
                pass

    def _authorized(self, request: Request) -> bool:
        return self._identity(request) is not None

    def _identity(self, request: Request) -> str | None:
        """The account SID whose credentials the request carries (an API key is the main account's)."""
        header = request.headers.get("authorization")
        if not header:
            return None
        cached = self._auth_cache.get(header)
        if cached is not None:
            return cached or None
        ok = ""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(encoded.strip()).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                user = password = ""
            cfg = self.config
            pairs = [(cfg.account_sid, cfg.auth_token, cfg.account_sid)]
            if cfg.api_key_sid and cfg.api_key_secret:
                pairs.append((cfg.api_key_sid, cfg.api_key_secret, cfg.account_sid))
            pairs.extend((sid, token, sid) for sid, token in cfg.subaccounts)
            for u, p, account in pairs:
                if hmac.compare_digest(user.encode(), u.encode()) and hmac.compare_digest(password.encode(), p.encode()):
                    ok = account
        if len(self._auth_cache) > 1024:
            self._auth_cache.clear()
        self._auth_cache[header] = ok
        return ok or None

    def _check_account(self, request: Request, account_sid: str) -> str | None:
        """The model's account key for the path's account (None: the main one); 401 when the
        credentials are not that account's (the main account may act for its subaccounts, as on Twilio)."""
        identity = self._identity(request)
        main = self.config.account_sid
        if account_sid == main and identity == main:
            return None
        if account_sid in self._subaccount_sids and identity in (account_sid, main):
            return account_sid
        raise unauthorized()

    def _account_of(self, request: Request) -> str | None:
        """The model's account key of the caller (admin endpoints, which have no account in the path)."""
        identity = self._identity(request)
        return None if identity == self.config.account_sid else identity

    @staticmethod
    def _host_url(request: Request) -> str:
        return "http://" + request.headers.get("host", "127.0.0.1")

    def _json(self, status: int, obj, headers: dict | None = None) -> Response:
        return Response(status, _dumps(obj), headers=headers)

    # -- API 2010-04-01 ------------------------------------------------------------------------
    def create_message(self, request: Request, account_sid: str) -> Response:
        acct = self._check_account(request, account_sid)
        m = self.model.create_message(request.form(), acct)
        return self._json(201, self.model.message_json(m, m.created, initial=True))

    def fetch_message(self, request: Request, account_sid: str, sid: str) -> Response:
        acct = self._check_account(request, account_sid)
        m = self.model.messages.get(sid) if MESSAGE_SID.match(sid) else None
        if m is None or m.acct != acct:
            raise not_found(request.path)
        return self._json(200, self.model.message_json(m, self.model.now()))

    def list_messages(self, request: Request, account_sid: str) -> Response:
        acct = self._check_account(request, account_sid)
        params = request.params
        to = _phone(params["To"][0]) if params.get("To") else None
        frm = _phone(params["From"][0]) if params.get("From") else None
        lo, hi, filtered = -math.inf, math.inf, False
        filters: list[tuple[str, str]] = []
        for name in ("DateSent", "DateSent<", "DateSent>"):
            for raw in params.get(name, []):
                value, op = raw, name[8:]
                if name == "DateSent" and raw[:1] in "<>":
                    op, value = raw[:1], raw[1:].lstrip("=")
                try:
                    start, end, _ = parse_date_filter(value)
                except ValueError:
                    raise bad_request(20001, f"Invalid {name} value: {raw}") from None
                filtered = True
                if op == "<":
                    hi = min(hi, end)
                elif op == ">":
                    lo = max(lo, start)
                else:
                    lo, hi = max(lo, start), min(hi, end)
                filters.append((name, raw))
        page_size = _int_param(params, "PageSize", 50, 1, 1000)
        page = _int_param(params, "Page", 0, 0, 10**9)
        token = params["PageToken"][0] if params.get("PageToken") else None
        now = self.model.now()
        items, more_after, more_before = self.model.list_messages(
            to, frm, lo, hi, filtered, page_size, token, now, acct)
        base = [("To", to)] if to else []
        if frm:
            base.append(("From", frm))
        base.extend(filters)
        path = f"/2010-04-01/Accounts/{account_sid}/Messages.json"
        body = self._page_2010(path, base, page_size, page, token, "messages",
                               [self.model.message_json(m, now) for m in items],
                               f"PA{items[-1].sid}" if items and more_after else None,
                               f"PB{items[0].sid}" if items and page > 0 and more_before else None)
        return self._json(200, body)

    @staticmethod
    def _page_2010(path, base, page_size, page, token, key, items, next_token, prev_token) -> dict:
        def uri(page_no: int, page_token: str | None) -> str:
            query = base + [("PageSize", str(page_size)), ("Page", str(page_no))]
            if page_token:
                query.append(("PageToken", page_token))
            return path + "?" + urlencode(query, quote_via=quote, safe="")

        start = page * page_size
        return {
            "end": start + len(items) - 1 if items else start,
            "first_page_uri": uri(0, None),
            key: items,
            "next_page_uri": uri(page + 1, next_token) if next_token else None,
            "page": page,
            "page_size": page_size,
            "previous_page_uri": uri(page - 1, prev_token) if prev_token else None,
            "start": start,
            "uri": uri(page, token),
        }

    def _offset_page(self, params: dict, max_size: int, default: int = 50) -> tuple[int, int, int]:
        """(page_size, page, offset) for the small lists paged by position (PageToken `PT<offset>`)."""
        page_size = _int_param(params, "PageSize", default, 1, max_size)
        page = _int_param(params, "Page", 0, 0, 10**9)
        token = params["PageToken"][0] if params.get("PageToken") else ""
        offset = page * page_size
        if token.startswith("PT") and token[2:].isdigit():
            offset = int(token[2:])
        return page_size, page, offset

    def list_numbers(self, request: Request, account_sid: str) -> Response:
        self._check_account(request, account_sid)
        params = request.params
        wanted = (params.get("PhoneNumber") or [""])[0].replace("*", "").strip()
        wanted = _phone(wanted) if wanted.startswith(" ") else wanted
        friendly = (params.get("FriendlyName") or [""])[0]
        numbers = [self._incoming_number(n, account_sid) for n in self.model.owned_numbers]
        numbers = [n for n in numbers if wanted in n["phone_number"]
                   and (not friendly or n["friendly_name"] == friendly)]
        page_size, page, offset = self._offset_page(params, 1000)
        chunk = numbers[offset:offset + page_size]
        base = [(k, params[k][0]) for k in ("PhoneNumber", "FriendlyName") if params.get(k)]
        body = self._page_2010(f"/2010-04-01/Accounts/{account_sid}/IncomingPhoneNumbers.json", base,
                               page_size, page, params.get("PageToken", [None])[0],
                               "incoming_phone_numbers", chunk,
                               f"PT{offset + page_size}" if offset + page_size < len(numbers) else None,
                               f"PT{max(offset - page_size, 0)}" if offset > 0 else None)
        return self._json(200, body)

    def provision_number(self, request: Request, account_sid: str) -> Response:
        """Buy a number (PhoneNumber=+1...): from then on it sends, as on Twilio."""
        self._check_account(request, account_sid)
        number = self.model.provision_number((request.form().get("PhoneNumber") or [None])[0])
        return self._json(201, self._incoming_number(number, account_sid))

    def release_number(self, request: Request, account_sid: str, sid: str) -> Response:
        """Release a number (DELETE IncomingPhoneNumbers/{PNsid}.json): 204, and it no longer sends."""
        self._check_account(request, account_sid)
        number = next((n for n in self.model.owned_numbers if _number_sid("PN", n) == sid), None)
        if number is None or not self.model.release_number(number):
            raise not_found(request.path)
        return Response(204, b"")

    def list_short_codes(self, request: Request, account_sid: str) -> Response:
        """The account's short codes (those of the built-in service's pool)."""
        self._check_account(request, account_sid)
        params = request.params
        wanted = (params.get("ShortCode") or [""])[0].strip()
        created = rfc2822(FIXED_CREATED)
        codes = [c for c in self.model.short_codes if wanted in c]
        page_size, page, offset = self._offset_page(params, 1000)
        base_path = f"/2010-04-01/Accounts/{account_sid}/SMS/ShortCodes"
        chunk = [{
            "account_sid": account_sid, "api_version": "2010-04-01", "date_created": created,
            "date_updated": created, "friendly_name": code, "short_code": code,
            "sid": _number_sid("SC", code), "sms_fallback_method": "POST", "sms_fallback_url": None,
            "sms_method": "POST", "sms_url": None, "uri": f"{base_path}/{_number_sid('SC', code)}.json",
        } for code in codes[offset:offset + page_size]]
        base = [("ShortCode", wanted)] if wanted else []
        body = self._page_2010(base_path + ".json", base, page_size, page, params.get("PageToken", [None])[0],
                               "short_codes", chunk,
                               f"PT{offset + page_size}" if offset + page_size < len(codes) else None,
                               f"PT{max(offset - page_size, 0)}" if offset > 0 else None)
        return self._json(200, body)

    def _incoming_number(self, number: str, acct: str) -> dict:
        sid = _number_sid("PN", number)
        digits = number[2:] if number.startswith("+1") and len(number) == 12 else None
        friendly = f"({digits[:3]}) {digits[3:6]}-{digits[6:]}" if digits else number
        created = rfc2822(FIXED_CREATED)
        return {
            "account_sid": acct, "address_requirements": "none", "address_sid": None,
            "api_version": "2010-04-01", "beta": False,
            "capabilities": {"voice": False, "sms": True, "mms": True, "fax": False},
            "date_created": created, "date_updated": created, "emergency_status": "Inactive",
            "emergency_address_sid": None, "emergency_address_status": "unregistered",
            "friendly_name": friendly, "identity_sid": None, "origin": "twilio",
            "phone_number": number, "sid": sid, "sms_application_sid": None,
            "sms_fallback_method": "POST", "sms_fallback_url": None, "sms_method": "POST",
            "sms_url": None, "status_callback": None, "status_callback_method": "POST",
            "trunk_sid": None, "uri": f"/2010-04-01/Accounts/{acct}/IncomingPhoneNumbers/{sid}.json",
            "voice_receive_mode": "voice", "voice_application_sid": None, "voice_caller_id_lookup": False,
            "voice_fallback_method": "POST", "voice_fallback_url": None, "voice_method": "POST",
            "voice_url": None, "bundle_sid": None, "status": "in-use", "type": "local",
        }

    def fetch_account(self, request: Request, account_sid: str) -> Response:
        self._check_account(request, account_sid)
        created = rfc2822(FIXED_CREATED)
        base = f"/2010-04-01/Accounts/{account_sid}"
        # auth_token stays null: the sandbox never echoes a credential, even the caller's own
        return self._json(200, {
            "auth_token": None,
            "date_created": created, "date_updated": created, "friendly_name": "Sandbox account",
            "owner_account_sid": account_sid, "sid": account_sid, "status": "active", "type": "Full",
            "uri": base + ".json",
            "subresource_uris": {"messages": base + "/Messages.json",
                                 "incoming_phone_numbers": base + "/IncomingPhoneNumbers.json"},
        })

    # -- Messaging v1 --------------------------------------------------------------------------
    def _service_json(self, host: str) -> dict:
        sid = self.model.service_sid
        url = f"{host}/v1/Services/{sid}"
        created = iso8601(FIXED_CREATED)
        return {
            "account_sid": self.config.account_sid, "sid": sid, "date_created": created,
            "date_updated": created, "friendly_name": "Sandbox Messaging Service",
            "inbound_request_url": None, "inbound_method": "POST", "fallback_url": None,
            "fallback_method": "POST", "status_callback": None, "sticky_sender": True,
            "mms_converter": True, "smart_encoding": False, "fallback_to_long_code": False,
            "area_code_geomatch": True, "validity_period": 36000, "scan_message_content": "inherit",
            "synchronous_validation": True, "usecase": "marketing", "us_app_to_person_registered": False,
            "use_inbound_webhook_on_number": False,
            "links": {"phone_numbers": url + "/PhoneNumbers", "short_codes": url + "/ShortCodes",
                      "alpha_senders": url + "/AlphaSenders", "messages": url + "/Messages",
                      "us_app_to_person": url + "/Compliance/Usa2p",
                      "us_app_to_person_usecases": url + "/Compliance/Usa2p/Usecases",
                      "channel_senders": url + "/ChannelSenders",
                      "destination_alpha_senders": url + "/DestinationAlphaSenders"},
            "url": url,
        }

    def _service_number_json(self, host: str, number: str) -> dict:
        sid = _number_sid("PN", number)
        service = self.model.service_sid
        created = iso8601(FIXED_CREATED)
        return {
            "account_sid": self.config.account_sid, "service_sid": service, "sid": sid,
            "date_created": created, "date_updated": created, "phone_number": number,
            "country_code": "US" if number.startswith("+1") else None, "capabilities": ["SMS", "MMS"],
            "url": f"{host}/v1/Services/{service}/PhoneNumbers/{sid}",
        }

    def _v1_page(self, request: Request, path: str, key: str, items: list, max_size: int) -> dict:
        params = request.params
        page_size, page, offset = self._offset_page(params, max_size)
        host = self._host_url(request)
        chunk = items[offset:offset + page_size]

        def url(page_no: int, page_token: str | None) -> str:
            query = [("PageSize", str(page_size)), ("Page", str(page_no))]
            if page_token:
                query.append(("PageToken", page_token))
            return f"{host}{path}?" + urlencode(query, quote_via=quote, safe="")

        token = params.get("PageToken", [None])[0]
        return {
            key: chunk,
            "meta": {
                "page": page, "page_size": page_size, "first_page_url": url(0, None),
                "previous_page_url": url(page - 1, f"PT{max(offset - page_size, 0)}") if offset > 0 else None,
                "url": url(page, token),
                "next_page_url": url(page + 1, f"PT{offset + page_size}") if offset + page_size < len(items) else None,
                "key": key,
            },
        }

    def _check_service(self, request: Request, sid: str) -> None:
        if sid != self.model.service_sid:
            raise not_found(request.path)

    def list_services(self, request: Request) -> Response:
        return self._json(200, self._v1_page(request, "/v1/Services", "services",
                                             [self._service_json(self._host_url(request))], 1000))

    def fetch_service(self, request: Request, sid: str) -> Response:
        self._check_service(request, sid)
        return self._json(200, self._service_json(self._host_url(request)))

    def list_service_numbers(self, request: Request, sid: str) -> Response:
        self._check_service(request, sid)
        host = self._host_url(request)
        items = [self._service_number_json(host, n) for n in self.model.pool]
        return self._json(200, self._v1_page(request, f"/v1/Services/{sid}/PhoneNumbers", "phone_numbers", items, 1000))

    def fetch_service_number(self, request: Request, sid: str, number_sid: str) -> Response:
        self._check_service(request, sid)
        host = self._host_url(request)
        for number in self.model.pool:
            if number_sid in (_number_sid("PN", number), number):
                return self._json(200, self._service_number_json(host, number))
        raise not_found(request.path)

    def _service_sender_json(self, host: str, kind: str, value: str) -> dict:
        """A ShortCodes or AlphaSenders item, shaped as the Messaging v1 spec has it."""
        service = self.model.service_sid
        created = iso8601(FIXED_CREATED)
        if kind == "short_codes":
            sid = _number_sid("SC", value)
            item = {"short_code": value, "country_code": "US", "capabilities": ["SMS", "MMS"]}
            path = "ShortCodes"
        else:
            sid = _number_sid("AI", value)
            item = {"alpha_sender": value, "capabilities": ["SMS"]}
            path = "AlphaSenders"
        return {"account_sid": self.config.account_sid, "service_sid": service, "sid": sid,
                "date_created": created, "date_updated": created, **item,
                "url": f"{host}/v1/Services/{service}/{path}/{sid}"}

    def _list_service_senders(self, request: Request, sid: str, kind: str, values: tuple[str, ...],
                              path: str) -> Response:
        self._check_service(request, sid)
        host = self._host_url(request)
        items = [self._service_sender_json(host, kind, v) for v in values]
        return self._json(200, self._v1_page(request, f"/v1/Services/{sid}/{path}", kind, items, 1000))

    def _fetch_service_sender(self, request: Request, sid: str, item_sid: str, kind: str,
                              values: tuple[str, ...], prefix: str) -> Response:
        self._check_service(request, sid)
        for value in values:
            if item_sid in (_number_sid(prefix, value), value):
                return self._json(200, self._service_sender_json(self._host_url(request), kind, value))
        raise not_found(request.path)

    def list_service_short_codes(self, request: Request, sid: str) -> Response:
        return self._list_service_senders(request, sid, "short_codes", self.model.short_codes, "ShortCodes")

    def fetch_service_short_code(self, request: Request, sid: str, item_sid: str) -> Response:
        return self._fetch_service_sender(request, sid, item_sid, "short_codes", self.model.short_codes, "SC")

    def list_service_alpha_senders(self, request: Request, sid: str) -> Response:
        return self._list_service_senders(request, sid, "alpha_senders", self.model.alpha_senders, "AlphaSenders")

    def fetch_service_alpha_sender(self, request: Request, sid: str, item_sid: str) -> Response:
        return self._fetch_service_sender(request, sid, item_sid, "alpha_senders", self.model.alpha_senders, "AI")

    # -- Bulk Exports v1 -----------------------------------------------------------------------
    @staticmethod
    def _check_resource(request: Request, resource_type: str) -> None:
        if resource_type != "Messages":
            raise not_found(request.path)

    def _job_json(self, job, host: str, with_url: bool) -> dict:
        now = self.model.now()
        done = now >= job.t_done
        body = {
            "resource_type": "Messages", "friendly_name": job.friendly_name,
            "details": self.model.job_details(job, now), "start_day": job.start_day,
            "end_day": job.end_day, "job_sid": job.sid, "webhook_url": job.webhook_url,
            "webhook_method": job.webhook_method, "email": job.email,
            "job_queue_position": "0" if done else "1",
            "estimated_completion_time": iso8601_ms(job.t_done),
        }
        if with_url:
            body["url"] = f"{host}/v1/Exports/Jobs/{job.sid}"
        return body

    def fetch_export(self, request: Request, resource_type: str) -> Response:
        self._check_resource(request, resource_type)
        host = self._host_url(request)
        return self._json(200, {
            "resource_type": "Messages", "url": f"{host}/v1/Exports/Messages",
            "links": {"days": f"{host}/v1/Exports/Messages/Days",
                      "export_custom_jobs": f"{host}/v1/Exports/Messages/Jobs",
                      "jobs": f"{host}/v1/Exports/Jobs"},
        })

    def create_job(self, request: Request, resource_type: str) -> Response:
        self._check_resource(request, resource_type)
        job = self.model.create_export_job(request.form())
        return self._json(201, self._job_json(job, self._host_url(request), False))

    def list_jobs(self, request: Request, resource_type: str) -> Response:
        self._check_resource(request, resource_type)
        host = self._host_url(request)
        jobs = sorted(self.model.jobs.values(), key=lambda j: (-j.created, j.sid))
        items = [self._job_json(j, host, False) for j in jobs]
        return self._json(200, self._v1_page(request, "/v1/Exports/Messages/Jobs", "jobs", items, 1000))

    def fetch_job(self, request: Request, sid: str) -> Response:
        job = self.model.jobs.get(sid)
        if job is None:
            raise not_found(request.path)
        return self._json(200, self._job_json(job, self._host_url(request), True))

    def delete_job(self, request: Request, sid: str) -> Response:
        if not self.model.delete_export_job(sid):
            raise not_found(request.path)
        return Response(204, b"")

    def list_days(self, request: Request, resource_type: str) -> Response:
        self._check_resource(request, resource_type)
        self.model.complete_jobs(self.model.now())
        files = sorted(self.model.day_files.values(), key=lambda f: f["day"], reverse=True)
        items = [{"day": f["day"], "size": len(f["bytes"]), "create_date": f["create_date"],
                  "friendly_name": f["friendly_name"], "resource_type": "Messages"} for f in files]
        return self._json(200, self._v1_page(request, "/v1/Exports/Messages/Days", "days", items, 400))

    def _download_token(self, day: str) -> str:
        return hmac.new(self._download_key, day.encode(), hashlib.sha256).hexdigest()[:32]

    def fetch_day(self, request: Request, resource_type: str, day: str) -> Response:
        self._check_resource(request, resource_type)
        self.model.complete_jobs(self.model.now())
        if day not in self.model.day_files:
            raise not_found(request.path)
        link = (f"{self._host_url(request)}/_sandbox/exports/Messages/{day}.json.gz"
                f"?Signature={self._download_token(day)}")
        return self._json(307, {"redirect_to": link}, headers={"Location": link})

    def download_day(self, request: Request, resource_type: str, day: str) -> Response:
        signature = (request.params.get("Signature") or [""])[0]
        if not hmac.compare_digest(signature, self._download_token(day)):
            return self._json(403, {"code": 20003, "message": "Invalid or missing download signature",
                                    "more_info": "https://www.twilio.com/docs/errors/20003", "status": 403})
        day_file = self.model.day_files.get(day) if resource_type == "Messages" else None
        if day_file is None:
            raise not_found(request.path)
        return Response(200, day_file["bytes"], content_type="application/gzip")

    # -- admin -------------------------------------------------------------------------------
    def admin_inbound(self, request: Request) -> Response:
        body = request.body.lstrip()
        if request.headers.get("content-type", "").startswith("application/json") or body[:1] in (b"[", b"{"):
            try:
                data = json.loads(body or b"null")
            except json.JSONDecodeError as exc:
                raise bad_request(20001, f"invalid JSON body: {exc}") from None
            items = data if isinstance(data, list) else [data]
            msgs = self.model.inject_inbound(items, self._account_of(request))
            if isinstance(data, list):
                return self._json(201, {"created": len(msgs), "sids": [m.sid for m in msgs]})
        else:
            form = request.form()
            item = {k: v[0] for k, v in form.items() if v}
            msgs = self.model.inject_inbound([item], self._account_of(request))
        return self._json(201, self.model.message_json(msgs[0], self.model.now()))

    def admin_clock(self, request: Request) -> Response:
        if request.method == "POST":
            form = request.form()
            raw = (form.get("advance_s") or [""])[0]
            try:
                seconds = float(raw)
            except ValueError:
                raise bad_request(20001, "advance_s must be a number of seconds") from None
            self.model.advance_clock(seconds)
        now = self.model.now()
        return self._json(200, {"now": iso8601(now), "now_epoch": now, "offset_s": self.model.clock_offset,
                                "today": iso_day(now)})

    def admin_stats(self, request: Request) -> Response:
        return self._json(200, self.stats())

    def admin_reset(self, request: Request) -> Response:
        self.model.reset()
        self.reset_stats()
        return self._json(200, {"reset": True})

    def admin_messages(self, request: Request) -> Response:
        now = self.model.now()
        params = request.params
        to = _phone(params["To"][0]) if params.get("To") else None
        direction = params["direction"][0] if params.get("direction") else None
        model = self.model
        out = []
        for _, sid in model.idx_all:
            m = model.messages[sid]
            if (to is None or m.to == to) and (direction is None or m.direction == direction):
                out.append(model.dump_json(m, now))
        return self._json(200, out)

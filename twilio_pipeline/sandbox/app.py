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
import os
import random
import re
import sys
import time
from collections.abc import Callable

from twilio_pipeline.sandbox.config import SandboxConfig
from twilio_pipeline.sandbox.errors import (
    ApiError,
    method_not_allowed,
    not_found,
    server_error,
    too_many_requests,
    unauthorized,
)
from twilio_pipeline.sandbox.http import Connection, Request, Response
from twilio_pipeline.sandbox.model import Model
from twilio_pipeline.sandbox.paging import host_url
from twilio_pipeline.sandbox.routes.admin import AdminRoutes
from twilio_pipeline.sandbox.routes.api_2010 import Api2010Routes
from twilio_pipeline.sandbox.routes.exports_v1 import ExportRoutes
from twilio_pipeline.sandbox.routes.messaging_v1 import MessagingRoutes
from twilio_pipeline.sandbox.store import Store
from twilio_pipeline.sandbox.timefmt import iso8601

_API, _ADMIN, _DOWNLOAD = "api", "admin", "download"


_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)


def _dumps(obj) -> bytes:
    return _ENCODER.encode(obj).encode("utf-8")


class SandboxApp(Api2010Routes, MessagingRoutes, ExportRoutes, AdminRoutes):
    """The request pipeline (route, auth, concurrency limit, faults, latency, stats); the handlers are
    the mixins of `sandbox/routes/`, one per API."""

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

    _host_url = staticmethod(host_url)

    def _json(self, status: int, obj, headers: dict | None = None) -> Response:
        return Response(status, _dumps(obj), headers=headers)

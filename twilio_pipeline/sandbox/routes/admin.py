"""The sandbox's own `/_sandbox/` endpoints: inject inbound messages, move the clock, stats, reset,
dump messages. Never throttled, faulted, delayed or counted, so tests can watch without disturbing."""

from __future__ import annotations

import json

from twilio_pipeline.sandbox.errors import bad_request
from twilio_pipeline.sandbox.http import Request, Response
from twilio_pipeline.sandbox.message import dump_json, message_json, phone_param
from twilio_pipeline.sandbox.timefmt import iso8601, iso_day


class AdminRoutes:
    """Handlers of the `/_sandbox/` routes, mixed into `SandboxApp` (whose `model`, `config`, `stats`,
    `reset_stats`, `_json` and `_account_of` they use)."""

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
        return self._json(201, message_json(msgs[0], self.model.now(), self.config))

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
        to = phone_param(params["To"][0]) if params.get("To") else None
        direction = params["direction"][0] if params.get("direction") else None
        model = self.model
        out = []
        for _, sid in model.idx_all:
            m = model.messages[sid]
            if (to is None or m.to == to) and (direction is None or m.direction == direction):
                out.append(dump_json(m, now, self.config))
        return self._json(200, out)

"""The 2010-04-01 API of the sandbox: Messages, IncomingPhoneNumbers, SMS ShortCodes, the Account."""

from __future__ import annotations

import hashlib
import math

from twilio_pipeline.sandbox.errors import bad_request, not_found
from twilio_pipeline.sandbox.http import Request, Response
from twilio_pipeline.sandbox.message import MESSAGE_SID, message_json, phone_param
from twilio_pipeline.sandbox.paging import int_param, offset_page, page_2010
from twilio_pipeline.sandbox.timefmt import parse_date_filter, rfc2822

FIXED_CREATED = 1704067200.0  # 2024-01-01: creation date shown for the built-in numbers and service


def sid_of(prefix: str, number: str) -> str:
    """A stable SID for a number or short code the account holds (PN…, SC…, AI…)."""
    return prefix + hashlib.md5(number.encode()).hexdigest()


class Api2010Routes:
    """Handlers of the 2010-04-01 routes, mixed into `SandboxApp` (whose `model`, `config`, `_json`,
    `_host_url` and `_check_account` they use)."""

    def create_message(self, request: Request, account_sid: str) -> Response:
        acct = self._check_account(request, account_sid)
        m = self.model.create_message(request.form(), acct)
        return self._json(201, message_json(m, m.created, self.config, initial=True))

    def fetch_message(self, request: Request, account_sid: str, sid: str) -> Response:
        acct = self._check_account(request, account_sid)
        m = self.model.messages.get(sid) if MESSAGE_SID.match(sid) else None
        if m is None or m.acct != acct:
            raise not_found(request.path)
        return self._json(200, message_json(m, self.model.now(), self.config))

    def list_messages(self, request: Request, account_sid: str) -> Response:
        acct = self._check_account(request, account_sid)
        params = request.params
        to = phone_param(params["To"][0]) if params.get("To") else None
        frm = phone_param(params["From"][0]) if params.get("From") else None
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
        page_size = int_param(params, "PageSize", 50, 1, 1000)
        page = int_param(params, "Page", 0, 0, 10**9)
        token = params["PageToken"][0] if params.get("PageToken") else None
        now = self.model.now()
        items, more_after, more_before = self.model.list_messages(
            to, frm, lo, hi, filtered, page_size, token, now, acct)
        base = [("To", to)] if to else []
        if frm:
            base.append(("From", frm))
        base.extend(filters)
        path = f"/2010-04-01/Accounts/{account_sid}/Messages.json"
        body = page_2010(path, base, page_size, page, token, "messages",
                               [message_json(m, now, self.config) for m in items],
                               f"PA{items[-1].sid}" if items and more_after else None,
                               f"PB{items[0].sid}" if items and page > 0 and more_before else None)
        return self._json(200, body)

    def list_numbers(self, request: Request, account_sid: str) -> Response:
        self._check_account(request, account_sid)
        params = request.params
        wanted = (params.get("PhoneNumber") or [""])[0].replace("*", "").strip()
        wanted = phone_param(wanted) if wanted.startswith(" ") else wanted
        friendly = (params.get("FriendlyName") or [""])[0]
        numbers = [self._incoming_number(n, account_sid) for n in self.model.owned_numbers]
        numbers = [n for n in numbers if wanted in n["phone_number"]
                   and (not friendly or n["friendly_name"] == friendly)]
        page_size, page, offset = offset_page(params, 1000)
        chunk = numbers[offset:offset + page_size]
        base = [(k, params[k][0]) for k in ("PhoneNumber", "FriendlyName") if params.get(k)]
        body = page_2010(f"/2010-04-01/Accounts/{account_sid}/IncomingPhoneNumbers.json", base,
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
        number = next((n for n in self.model.owned_numbers if sid_of("PN", n) == sid), None)
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
        page_size, page, offset = offset_page(params, 1000)
        base_path = f"/2010-04-01/Accounts/{account_sid}/SMS/ShortCodes"
        chunk = [{
            "account_sid": account_sid, "api_version": "2010-04-01", "date_created": created,
            "date_updated": created, "friendly_name": code, "short_code": code,
            "sid": sid_of("SC", code), "sms_fallback_method": "POST", "sms_fallback_url": None,
            "sms_method": "POST", "sms_url": None, "uri": f"{base_path}/{sid_of('SC', code)}.json",
        } for code in codes[offset:offset + page_size]]
        base = [("ShortCode", wanted)] if wanted else []
        body = page_2010(base_path + ".json", base, page_size, page, params.get("PageToken", [None])[0],
                               "short_codes", chunk,
                               f"PT{offset + page_size}" if offset + page_size < len(codes) else None,
                               f"PT{max(offset - page_size, 0)}" if offset > 0 else None)
        return self._json(200, body)

    def _incoming_number(self, number: str, acct: str) -> dict:
        sid = sid_of("PN", number)
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

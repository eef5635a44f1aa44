"""The Messaging v1 API of the sandbox: the one Messaging Service and its sender pool."""

from __future__ import annotations

from twilio_pipeline.sandbox.errors import not_found
from twilio_pipeline.sandbox.http import Request, Response
from twilio_pipeline.sandbox.paging import v1_page
from twilio_pipeline.sandbox.routes.api_2010 import FIXED_CREATED, sid_of
from twilio_pipeline.sandbox.timefmt import iso8601


class MessagingRoutes:
    """Handlers of the `/v1/Services` routes, mixed into `SandboxApp` (whose `model`, `config`,
    `_json` and `_host_url` they use)."""

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
        sid = sid_of("PN", number)
        service = self.model.service_sid
        created = iso8601(FIXED_CREATED)
        return {
            "account_sid": self.config.account_sid, "service_sid": service, "sid": sid,
            "date_created": created, "date_updated": created, "phone_number": number,
            "country_code": "US" if number.startswith("+1") else None, "capabilities": ["SMS", "MMS"],
            "url": f"{host}/v1/Services/{service}/PhoneNumbers/{sid}",
        }

    def _check_service(self, request: Request, sid: str) -> None:
        if sid != self.model.service_sid:
            raise not_found(request.path)

    def list_services(self, request: Request) -> Response:
        return self._json(200, v1_page(request, "/v1/Services", "services",
                                             [self._service_json(self._host_url(request))], 1000))

    def fetch_service(self, request: Request, sid: str) -> Response:
        self._check_service(request, sid)
        return self._json(200, self._service_json(self._host_url(request)))

    def list_service_numbers(self, request: Request, sid: str) -> Response:
        self._check_service(request, sid)
        host = self._host_url(request)
        items = [self._service_number_json(host, n) for n in self.model.pool]
        return self._json(200, v1_page(request, f"/v1/Services/{sid}/PhoneNumbers", "phone_numbers", items, 1000))

    def fetch_service_number(self, request: Request, sid: str, number_sid: str) -> Response:
        self._check_service(request, sid)
        host = self._host_url(request)
        for number in self.model.pool:
            if number_sid in (sid_of("PN", number), number):
                return self._json(200, self._service_number_json(host, number))
        raise not_found(request.path)

    def _service_sender_json(self, host: str, kind: str, value: str) -> dict:
        """A ShortCodes or AlphaSenders item, shaped as the Messaging v1 spec has it."""
        service = self.model.service_sid
        created = iso8601(FIXED_CREATED)
        if kind == "short_codes":
            sid = sid_of("SC", value)
            item = {"short_code": value, "country_code": "US", "capabilities": ["SMS", "MMS"]}
            path = "ShortCodes"
        else:
            sid = sid_of("AI", value)
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
        return self._json(200, v1_page(request, f"/v1/Services/{sid}/{path}", kind, items, 1000))

    def _fetch_service_sender(self, request: Request, sid: str, item_sid: str, kind: str,
                              values: tuple[str, ...], prefix: str) -> Response:
        self._check_service(request, sid)
        for value in values:
            if item_sid in (sid_of(prefix, value), value):
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

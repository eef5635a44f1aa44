"""Twilio's error codes as the sandbox answers them: `{code, message, more_info, status}` bodies.

The 2010 API's error body is not in the OpenAPI spec; its shape is the one Twilio's helper
libraries read (`code`, `message`, `more_info`, `status`).
"""

from __future__ import annotations

# Delivery-time codes (error_code of failed/undelivered messages) and their dictionary titles.
DELIVERY_ERRORS = {
    30001: "Queue overflow",
    30003: "Unreachable destination handset",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered",
    30008: "Unknown error",
}
UNDELIVERED_CODES = (30003, 30005, 30006, 30007, 30008)
FAILED_CODES = (30007, 30008)
VALIDITY_EXPIRED_CODE = 30001


class ApiError(Exception):
    """A refusal with a Twilio error code; the server turns it into the error JSON body."""

    def __init__(self, status: int, code: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }


def bad_request(code: int, message: str) -> ApiError:
    return ApiError(400, code, message)


def not_found(path: str) -> ApiError:
    return ApiError(404, 20404, f"The requested resource {path} was not found")


def unauthorized() -> ApiError:
    return ApiError(
        401,
        20003,
        "Authenticate",
        {"WWW-Authenticate": 'Basic realm="Twilio API"'},
    )


def too_many_requests() -> ApiError:
    return ApiError(429, 20429, "Too Many Requests")


def server_error() -> ApiError:
    return ApiError(500, 20500, "Internal Server Error")


def method_not_allowed(method: str) -> ApiError:
    return ApiError(405, 20004, f"Method {method} not allowed")

"""Twilio REST access for the pipeline (requests + tenacity, no Dagster): the endpoints (`client`), the
account and its base URLs (`account`), one HTTP exchange and its failure sorting (`transport`), the
retry policy (`retry`), the Bulk Export day-file decoder (`export_stream`), errors, flow control
(`throttle`) and secret redaction. Twilio's date formats are `twilio_pipeline.dates`."""

from twilio_pipeline.dates import format_rfc3339, parse_twilio_date
from twilio_pipeline.twilio.account import Endpoints, TwilioCredentials
from twilio_pipeline.twilio.client import ACCEPTED, AMBIGUOUS, REFUSED, CreateResult, TwilioClient
from twilio_pipeline.twilio.errors import (
    SENDER_ERROR_CODES,
    AmbiguousRequest,
    CredentialsRejected,
    MalformedResponse,
    SenderRejected,
    TwilioApiError,
    TwilioUnavailable,
    is_sender_error,
)
from twilio_pipeline.twilio.redact import REDACTED, Redactor
from twilio_pipeline.twilio.retry import RetrySettings
from twilio_pipeline.twilio.throttle import AdaptiveLimiter, TokenBucket

__all__ = [
    "ACCEPTED",
    "AMBIGUOUS",
    "REFUSED",
    "AdaptiveLimiter",
    "AmbiguousRequest",
    "CreateResult",
    "CredentialsRejected",
    "Endpoints",
    "MalformedResponse",
    "REDACTED",
    "Redactor",
    "RetrySettings",
    "SENDER_ERROR_CODES",
    "SenderRejected",
    "TokenBucket",
    "TwilioApiError",
    "TwilioClient",
    "TwilioCredentials",
    "TwilioUnavailable",
    "format_rfc3339",
    "is_sender_error",
    "parse_twilio_date",
]

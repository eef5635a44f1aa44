"""Twilio REST access for the pipeline (requests + tenacity, no Dagster): the endpoints (`client`), one
HTTP exchange and its failure sorting (`transport`), the retry policy (`retry`), the Bulk Export
day-file decoder (`export_stream`), errors, flow control (`throttle`), dates and secret redaction."""

from twilio_pipeline.dates import format_rfc3339, parse_twilio_date
from twilio_pipeline.twilio.client import (
    ACCEPTED,
    AMBIGUOUS,
    REFUSED,
    CreateResult,
    Endpoints,
    TwilioClient,
    TwilioCredentials,
)
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

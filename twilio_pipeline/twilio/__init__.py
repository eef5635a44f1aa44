"""Twilio REST access for the pipeline (requests + tenacity, no Dagster): client, errors, flow control,
date helpers and secret redaction."""

from twilio_pipeline.twilio.client import (
    ACCEPTED,
    AMBIGUOUS,
    REFUSED,
    CreateResult,
    Endpoints,
    RetrySettings,
    TwilioClient,
    TwilioCredentials,
)
from twilio_pipeline.twilio.dates import format_rfc3339, parse_twilio_date
from twilio_pipeline.twilio.errors import (
    AmbiguousRequest,
    CredentialsRejected,
    MalformedResponse,
    TwilioApiError,
    TwilioUnavailable,
)
from twilio_pipeline.twilio.redact import REDACTED, Redactor
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
    "TokenBucket",
    "TwilioApiError",
    "TwilioClient",
    "TwilioCredentials",
    "TwilioUnavailable",
    "format_rfc3339",
    "parse_twilio_date",
]

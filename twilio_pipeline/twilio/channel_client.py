"""The one place a TwilioClient is built for a channel: its concurrency, rate, retry and trace settings.

The Dagster resource (`defs/resources.py`) resolves the channel's account and calls this; scripts, the
bench and the step tests call it with credentials of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twilio_pipeline.twilio import Endpoints, RetrySettings, TwilioClient, TwilioCredentials

if TYPE_CHECKING:
    from twilio_pipeline.channels import Channel


def client_for_channel(credentials: TwilioCredentials, channel: Channel, endpoints: Endpoints | None = None, *,
                       trace: Callable[[str], None] | None = None, **options) -> TwilioClient:
    """A TwilioClient with the channel's settings; `trace` is used only when the channel asks for it
    (`trace: true`), so an HTTP trace never reaches a log by accident."""
    r = channel.retry
    return TwilioClient(
        credentials,
        endpoints=endpoints or Endpoints(),
        retry=RetrySettings(r.max_attempts, r.min_delay_s, r.max_delay_s, r.throttle_budget_s),
        max_concurrency=channel.max_concurrency,
        requests_per_second=channel.requests_per_second,
        trace=trace if channel.trace else None,
        **options,
    )

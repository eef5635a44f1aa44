"""Step 1: the connectivity test (GET IncomingPhoneNumbers must answer 200) before anything is sent.

Retried with the channel's retry settings, each attempt logged in the guide's words. Rejected
credentials stop at once: retrying a 401 only locks accounts and delays the clear message.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from twilio_pipeline.channels import Channel
from twilio_pipeline.outbound.interaction_log import InteractionLog
from twilio_pipeline.twilio import CredentialsRejected, TwilioApiError


def check_connectivity(client, channel: Channel, log, *, sleep: Callable[[float], None] = time.sleep) -> dict:
    """Probe the account; returns metadata (attempts, incoming numbers seen, pool size for a service).

    Raises CredentialsRejected at once, or the last error after `retry.max_attempts` attempts.
    """
    ilog = InteractionLog(log, channel.name)
    retry = channel.retry
    attempts = max(1, retry.max_attempts)
    last: TwilioApiError | None = None
    for attempt in range(1, attempts + 1):
        ilog.testing_availability(attempt)
        try:
            numbers = client.connectivity_test()
        except CredentialsRejected as exc:
            ilog.warning(f"Channel availability test failed: {exc}")
            raise
        except TwilioApiError as exc:
            last = exc
            ilog.warning(f"Channel availability test attempt {attempt} failed: {exc}")
            if attempt < attempts:
                sleep(min(retry.max_delay_s, retry.min_delay_s * 2 ** (attempt - 1)))
            continue
        ilog.availability_results()
        ilog.connect_success()
        meta: dict = {"attempts": attempt, "incoming_numbers_seen": numbers}
        if channel.uses_service:
            pool = client.list_service_phone_numbers(channel.messaging_service_sid)
            meta["pool_numbers"] = len(pool)
            ilog.info(f"Messaging Service {channel.messaging_service_sid} has {len(pool)} number(s) in its pool")
        ilog.availability_ok()
        meta["interaction_log"] = ilog.text()
        return meta
    assert last is not None
    raise last

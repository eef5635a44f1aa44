"""Step 1: the connectivity test (GET IncomingPhoneNumbers must answer 200) before anything is sent.

Retried with the channel's retry settings, each attempt logged in the guide's words. Rejected
credentials stop at once: retrying a 401 only locks accounts and delays the clear message.

It also checks the channel's sender: a `from_number` the account does not hold (a typo) would get
21606 on every create, so it stops the send here, before any message, with one line naming it; a
Messaging Service that does not exist likewise.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from twilio_pipeline.channels import Channel
from twilio_pipeline.outbound.errors import OutboundInputError
from twilio_pipeline.outbound.interaction_log import InteractionLog
from twilio_pipeline.twilio import CredentialsRejected, TwilioApiError


class SenderNotOwned(OutboundInputError):
    """The channel's sender is not the account's: nothing can be sent until the channel is fixed."""


def check_sender(client, channel: Channel) -> None:
    """Raise SenderNotOwned unless the account holds the channel's from_number (or its service exists)."""
    if channel.uses_service:
        if client.fetch_service(channel.messaging_service_sid) is None:
            raise SenderNotOwned(
                f"channel {channel.name!r}: messaging_service_sid {channel.messaging_service_sid} is not a "
                f"Messaging Service of account {client.account_sid}; fix the channel file, nothing was sent")
        return
    if not client.owns_sender(channel.from_number):
        kind = "SMS ShortCodes" if channel.from_number.isdigit() else "IncomingPhoneNumbers"
        raise SenderNotOwned(
            f"channel {channel.name!r}: from_number {channel.from_number} is not one of account "
            f"{client.account_sid}'s numbers ({kind}); fix the channel file, nothing was sent")


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
        try:
            check_sender(client, channel)
        except SenderNotOwned as exc:
            ilog.warning(f"Channel availability test failed: {exc}")
            raise
        if channel.uses_service:
            pool = client.list_service_phone_numbers(channel.messaging_service_sid)
            meta["pool_numbers"] = len(pool)
            ilog.info(f"Messaging Service {channel.messaging_service_sid} has {len(pool)} number(s) in its pool")
        ilog.availability_ok()
        meta["interaction_log"] = ilog.text()
        return meta
    assert last is not None
    raise last

"""The connectivity test also checks the channel's sender: a typo'd from_number (21606 on every create)
or an unknown Messaging Service stops the send before any message, with one line naming it."""

from __future__ import annotations

import pytest

from twilio_pipeline.outbound import check_connectivity
from twilio_pipeline.outbound.connectivity import SenderNotOwned
from twilio_pipeline.outbound.errors import OutboundInputError
from twilio_pipeline.sandbox import SANDBOX_MESSAGING_SERVICE_SID

from .conftest import SENDER, channels, client_for


@pytest.fixture
def owning_sandbox(make_sandbox):
    return make_sandbox(owned_numbers=f"{SENDER},+15017120001", pool_short_codes="24680")


@pytest.mark.parametrize("spec", [
    {"from_number": SENDER},
    {"from_number": "+15017120001"},
    {"from_number": "24680"},  # a short code: the account's SMS ShortCodes
    {"messaging_service_sid": SANDBOX_MESSAGING_SERVICE_SID},
])
def test_a_sender_of_the_account_passes(owning_sandbox, log, spec):
    channel = channels(**spec).channels[0]
    with client_for(owning_sandbox, channel) as client:
        meta = check_connectivity(client, channel, log)
    assert meta["attempts"] == 1


@pytest.mark.parametrize(("spec", "named"), [
    ({"from_number": "+15005550060"}, "from_number +15005550060"),
    ({"from_number": "13579"}, "from_number 13579"),
    ({"messaging_service_sid": "MG" + "f" * 32}, "messaging_service_sid MG" + "f" * 32),
])
def test_a_sender_not_of_the_account_is_one_line_naming_it(owning_sandbox, log, spec, named):
    channel = channels(**spec).channels[0]
    with client_for(owning_sandbox, channel) as client, pytest.raises(SenderNotOwned) as err:
        check_connectivity(client, channel, log)
    assert isinstance(err.value, OutboundInputError)  # bad input: exit 2 at the CLI
    message = str(err.value)
    assert named in message and "\n" not in message and "Test SMS Channel" in message
    assert owning_sandbox.messages() == []

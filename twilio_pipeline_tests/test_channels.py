"""The channel file: every docs/reference.md key with its default, and clear one-line errors for bad files."""

from __future__ import annotations

import pytest

from twilio_pipeline.channels import ChannelConfigError, load_channels, parse_channels
from twilio_pipeline.settings import project_root

MINIMAL = {"channels": [{"name": "A", "from_number": "+15005550006"}]}


def test_shipped_channel_file_loads():
    channels = load_channels(project_root() / "channels.yaml")
    demo = channels.get("Demo SMS Channel")
    assert demo.from_number == "+15005550006" and demo.sender == "+15005550006"


def test_every_contract_key_has_its_default():
    c = parse_channels(MINIMAL).channels[0]
    assert c.keywords == () and c.seeds == () and c.seed_attributes == {}
    assert c.default_region is None and c.append_opt_out is None
    assert c.max_concurrency == 20 and c.requests_per_second is None
    assert (c.retry.max_attempts, c.retry.min_delay_s, c.retry.max_delay_s, c.retry.throttle_budget_s) == (5, 1, 20, 600)
    assert c.validity_period_s == 36000 and c.retrieval_period_days == 395 and c.records_per_sync == 10000
    assert c.reply_attribution == "latest" and c.status_sync == "list" and c.notification_email is None
    assert c.price_per_segment is None and c.sync_interval_minutes == 15 and c.follow_ups == {}
    assert c.connectivity_test is True and c.trace is False


def test_messaging_service_channel_and_short_code():
    c = parse_channels({"channels": [{"name": "P", "messaging_service_sid": "MG" + "a" * 32},
                                     {"name": "S", "from_number": "12345"}]})
    assert c.channels[0].uses_service and c.channels[0].sender == "MG" + "a" * 32
    assert c.channels[1].from_number == "12345"


@pytest.mark.parametrize(
    "channel, fragment",
    [
        ({"name": "A", "from_number": "+15005550006", "colour": "red"}, "channel 'A': key 'colour': unknown key"),
        ({"name": "A"}, "channel 'A': exactly one of from_number and messaging_service_sid is required"),
        ({"name": "A", "from_number": "+15005550006", "messaging_service_sid": "MG" + "0" * 32},
         "exactly one of from_number and messaging_service_sid"),
        ({"name": "A", "messaging_service_sid": "MG123"}, "key 'messaging_service_sid': must be 'MG' followed by 32 hex"),
        ({"name": "A", "from_number": "5550006"}, "key 'from_number': must be an E.164 number"),
        ({"name": "A", "from_number": "+15005550006", "retry": {"max_attempts": -1}},
         "key 'retry.max_attempts': Input should be greater than or equal to 1"),
        ({"name": "A", "from_number": "+15005550006", "max_concurrency": 0}, "key 'max_concurrency'"),
        ({"name": "A", "from_number": "+15005550006", "reply_attribution": "first"}, "key 'reply_attribution'"),
        ({"name": "A", "from_number": "+15005550006", "keywords": ["TWO WORDS"]}, "must be one word"),
        ({"name": "A", "from_number": "+15005550006", "keywords": ["STOP"]}, "one of Twilio's own keywords"),
        ({"name": "A", "from_number": "+15005550006", "follow_ups": {"STOP": {"body": "x"}}}, "is an opt-out"),
        ({"name": "A", "from_number": "+15005550006", "follow_ups": {"MORE": {"body": "x"}}}, "not one of this channel's keywords"),
        ({"name": "A", "from_number": "+15005550006", "default_region": "XX"}, "not a known region code"),
        ({"name": "A", "from_number": "+15005550006", "validity_period_s": 40000}, "key 'validity_period_s'"),
        ({"from_number": "+15005550006"}, "channel #1: key 'name': is required"),
    ],
)
def test_bad_channel_is_rejected_with_channel_key_and_problem(channel, fragment):
    with pytest.raises(ChannelConfigError) as info:
        parse_channels({"channels": [channel]})
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_duplicate_names_and_missing_top_level_key():
    with pytest.raises(ChannelConfigError, match="channel name 'A' is used twice"):
        parse_channels({"channels": [MINIMAL["channels"][0], MINIMAL["channels"][0]]})
    with pytest.raises(ChannelConfigError, match="top-level key 'channels'"):
        parse_channels([{"name": "A"}])


def test_unknown_channel_names_the_known_ones():
    with pytest.raises(ChannelConfigError, match="unknown channel 'B'; the channel file defines 'A'"):
        parse_channels(MINIMAL).get("B")


def test_unreadable_and_invalid_yaml_files(tmp_path):
    with pytest.raises(ChannelConfigError, match="does not exist"):
        load_channels(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("channels: [\n  - name: A\n   from: x")
    with pytest.raises(ChannelConfigError, match="not valid YAML at line"):
        load_channels(bad)

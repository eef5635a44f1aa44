"""Environment -> settings: sandbox mode without an account, validated credentials, safe identifiers."""

import pytest

from twilio_pipeline.settings import SettingsError, load_settings

SID = "AC" + "1" * 32


def test_no_account_means_sandbox_mode_with_local_defaults():
    s = load_settings({})
    assert s.sandbox_mode and s.credentials is None
    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith(".data/twilio_pipeline.db")
    assert s.channels_path.name == "channels.yaml"
    assert s.endpoints.api_base == "https://api.twilio.com"


def test_account_with_token_or_api_key():
    s = load_settings({"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": "tok"})
    assert not s.sandbox_mode and s.credentials.auth_token == "tok"
    s = load_settings({"TWILIO_ACCOUNT_SID": SID, "TWILIO_API_KEY_SID": "SK" + "2" * 32, "TWILIO_API_KEY_SECRET": "s3cr3t-value"})
    assert s.credentials.api_key_secret == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(s.credentials)
    assert "t0ken-value" not in repr(load_settings(
        {"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": "t0ken-value"}).credentials)


@pytest.mark.parametrize("env, fragment", [
    ({"TWILIO_ACCOUNT_SID": "AC123"}, "TWILIO_ACCOUNT_SID must be"),
    ({"TWILIO_ACCOUNT_SID": SID}, "neither TWILIO_AUTH_TOKEN nor an API key"),
    ({"TWILIO_ACCOUNT_SID": SID, "TWILIO_API_KEY_SID": "SK" + "2" * 32}, "must be set together"),
    ({"TWILIO_PIPELINE_TABLE_PREFIX": "x; DROP TABLE y"}, "not a plain SQL identifier"),
    ({"TWILIO_PIPELINE_DB_SCHEMA": "a.b"}, "not a plain SQL identifier"),
])
def test_bad_environment_is_named(env, fragment):
    with pytest.raises(SettingsError, match=fragment):
        load_settings(env)

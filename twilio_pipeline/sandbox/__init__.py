"""The sandbox: a local Twilio-compatible server (Messages, IncomingPhoneNumbers, Messaging Services,
Bulk Exports) that the pipeline, its tests and its users run against when no account is configured.

Run it with `twilio-pipeline sandbox` or `python -m twilio_pipeline.sandbox`; start it from Python
with `SandboxProcess` (tests, benchmarks) or `ensure_embedded_sandbox` (the pipeline's default).
"""

from twilio_pipeline.sandbox.credentials import (
    SANDBOX_ACCOUNT_SID,
    SANDBOX_AUTH_TOKEN,
    SANDBOX_MESSAGING_SERVICE_SID,
    SANDBOX_POOL_NUMBERS,
)
from twilio_pipeline.sandbox.embedded import EmbeddedSandbox, ensure_embedded_sandbox, stop_embedded_sandbox
from twilio_pipeline.sandbox.process import SandboxError, SandboxProcess

__all__ = [
    "SANDBOX_ACCOUNT_SID",
    "SANDBOX_AUTH_TOKEN",
    "SANDBOX_MESSAGING_SERVICE_SID",
    "SANDBOX_POOL_NUMBERS",
    "EmbeddedSandbox",
    "SandboxError",
    "SandboxProcess",
    "ensure_embedded_sandbox",
    "stop_embedded_sandbox",
]

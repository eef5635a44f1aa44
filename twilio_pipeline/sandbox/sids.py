"""SIDs the sandbox mints (messages, export jobs): Twilio's two-letter prefix and 32 hex digits.

They come from a generator seeded from the OS, apart from `--seed`: two runs with the same seed plan
the same outcomes but must not hand out the same SIDs (a store reloaded beside a new run would clash).
"""

from __future__ import annotations

import os
import random

_sid_random = random.Random(os.urandom(32))  # unique, not secret: seeded apart from --seed


def new_sid(prefix: str) -> str:
    return f"{prefix}{_sid_random.getrandbits(128):032x}"

"""`python -m twilio_pipeline.sandbox [flags]`: the sandbox in the foreground."""

import sys

from twilio_pipeline.sandbox.cli import main

sys.exit(main())

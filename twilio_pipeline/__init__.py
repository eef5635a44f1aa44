"""twilio_pipeline: a Twilio SMS channel (outbound fulfillment and channel sync) as a Dagster code location."""

__version__ = "0.1.0"

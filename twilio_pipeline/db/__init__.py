"""Database layer (SQLAlchemy Core; no Dagster): tables, bulk loads, set-based merges, staging, leases."""

from twilio_pipeline.db.database import Database, utcnow
from twilio_pipeline.db.schema import Tables, build_tables

__all__ = ["Database", "Tables", "build_tables", "utcnow"]

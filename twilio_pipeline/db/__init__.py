"""Database layer (SQLAlchemy Core; no Dagster).

schema: the tables; database: `Database` (engine per dialect, DDL, set-based merges, staging tables);
bulk: each dialect's bulk load and its column-wise encoding; leases: execution leases and the one rule
for whether a holder is alive. Moments are stored as naive UTC (`twilio_pipeline.dates`).
"""

from twilio_pipeline.db.database import Database, utcnow
from twilio_pipeline.db.schema import Tables, build_tables

__all__ = ["Database", "Tables", "build_tables", "utcnow"]

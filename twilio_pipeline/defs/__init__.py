"""The Dagster edge: resources, partitions, assets, checks, jobs, sensors and schedules. Thin by design:
each asset calls one domain function and turns its summary into metadata."""

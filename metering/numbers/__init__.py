"""Phone numbers: the durable inventory in Postgres and the renewal scheduler
(`python -m metering number-scheduler`)."""

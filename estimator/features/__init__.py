"""Features: a job's GPU telemetry turned into one row of underutilization signals."""

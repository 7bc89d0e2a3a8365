"""Telemetry collectors: every source produces the canonical frame of :mod:`collectors.schema`."""

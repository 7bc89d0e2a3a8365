"""zest serve: zest's own metrics, the collector over them, the cycle runner, its config and HTTP."""

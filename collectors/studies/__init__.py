"""Tuning studies (Optuna, ZenithTune) and the SQLite store of their outcomes."""

"""Fixtures and settings shared by the test modules: one real Slurm cluster per test session."""

from __future__ import annotations

import os

# scikit-learn's estimator checks include one that runs ZeRegressor with array-API dispatch on
# NumPy input; it needs SciPy's array-API mode, which SciPy reads once, at its first import.
os.environ["SCIPY_ARRAY_API"] = "1"

from slurmcluster import slurm_cluster  # noqa: F401  (a session fixture, started once)

"""Fixtures shared by several test modules: one real Slurm cluster per test session."""

from __future__ import annotations

from slurmcluster import slurm_cluster  # noqa: F401  (a session fixture, started once)

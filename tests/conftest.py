"""Fixtures and settings shared by the test modules: one real Slurm cluster per test session."""

from __future__ import annotations

import os

import pytest

# scikit-learn's estimator checks include one that runs ZeRegressor with array-API dispatch on
# NumPy input; it needs SciPy's array-API mode, which SciPy reads once, at its first import.
os.environ["SCIPY_ARRAY_API"] = "1"

from slurmcluster import slurm_cluster  # noqa: F401  (a session fixture, started once)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test fails the run: every component the tests use is required, none is optional."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and exitstatus == pytest.ExitCode.OK and reporter.stats.get("skipped"):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped:
        terminalreporter.write_sep("=", f"{len(skipped)} test(s) skipped: a skip fails this suite", red=True)

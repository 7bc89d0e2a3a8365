"""``python -m estimator.cli``: the ``zest`` command, where its script is not on PATH."""

from estimator.cli.main import main

main()

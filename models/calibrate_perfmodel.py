"""Refit the performance model's constants from the repository's measured data (a thin script).

    python models/calibrate_perfmodel.py [--data DIR] [--shared DIR] [--out FILE] [--no-cv]
    python models/calibrate_perfmodel.py --held-out [--shared DIR]
    python models/calibrate_perfmodel.py --ranking [--data DIR] [--shared DIR]

The fit itself is :mod:`estimator.perfmodel.calibration`; this script only
names the paths of a checkout: the measured tables under ``../shared/data``
(vTrain, llm-foundry, torchtitan) and ``models/perfmodel_constants.json``.
It takes about 3 minutes on 2 cores (fits and a 5-fold cross-validation
grouped by model). ``--held-out`` prints the error of the written constants
on the llm-foundry and torchtitan tables (nothing fitted or written);
``--ranking`` how well the cross-validated model ranks each vTrain study's
configurations (top-1 measured against the best, top-3 hit rate; nothing written).
"""

from __future__ import annotations

from pathlib import Path

from estimator.perfmodel.calibration import main

REPO = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    raise SystemExit(
        main(
            default_data=REPO.parent / "shared" / "data" / "vtrain",
            default_out=REPO / "models" / "perfmodel_constants.json",
        )
    )

"""Refit the performance model's constants from the repository's measured data (a thin script).

    python models/calibrate_perfmodel.py [--data DIR] [--out FILE] [--cv]
    python models/calibrate_perfmodel.py --held-out [--shared DIR]

The fit itself is :mod:`estimator.perfmodel.calibration`; this script only
names the paths of a checkout: vTrain's table in ``../shared/data/vtrain``
and ``models/perfmodel_constants.json``. ``--held-out`` prints the error of
those constants on the llm-foundry and torchtitan tables in ``../shared/data``
(not fitted; nothing written).
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

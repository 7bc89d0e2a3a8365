"""The performance model of a training iteration, and its calibration on measured iteration times."""

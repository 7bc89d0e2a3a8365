"""The names of the series zest exports (``zest serve``): one prefix, its labels, and the metric names.

One prefix, base units (ratios, seconds, bytes), counters ending in ``_total``. A ratio of a share
(Z, utilization) is 0-1; Z_break's ratio exceeds 1 where no improvement can pay for the tuning. GPU
time is in GPU-seconds (seconds of one GPU), the base unit of GPU-hours: divide by 3600 for
GPU-hours. The names zest reads from other exporters are in :mod:`collectors.metrics`.

By default a job has about 25 series (README, "Metrics"); the ones marked *detail* come only with
``[serve] detail = true`` (:attr:`estimator.serving.config.ServeConfig.detail`).
"""

from __future__ import annotations

ZEST_PREFIX = "zest_"
#: Label of every per-job series: the job id as the source names it (not ``job``, which the
#: scrape configuration sets to the scrape job's name).
ZEST_JOB_LABEL = "job_id"
ZEST_ALGORITHM_LABEL = "algorithm"
ZEST_BOUND_LABEL = "bound"  # low, mid, high of a Z interval (Z_e, or an algorithm's Z: mid, low/high detail)
ZEST_VERDICT_LABEL = "verdict"  # the algorithm's current verdict: one series per algorithm, value 1
ZEST_RECOMMENDATION_LABEL = "recommendation"  # the recommended algorithm, or NO_RECOMMENDATION
NO_RECOMMENDATION = "none"  # the recommendation label's value when no algorithm proceeds
ZEST_SOURCE_LABEL = "source"
ZEST_REASON_LABEL = "reason"
ZEST_HOST_LABEL = "host"
ZEST_GPU_LABEL = "gpu"
ZEST_GPU_MODEL_LABEL = "gpu_model"
ZEST_DIAGNOSIS_LABEL = "diagnosis"  # a rule of estimator.features.diagnoses ("input-bound")
#: Where T came from: default (built in, not configured), config, slurm (a label of T's series).
ZEST_T_SOURCE_LABEL = "t_source"

ZEST_BUILD_INFO = "zest_build_info"
ZEST_CYCLE_DURATION = "zest_cycle_duration_seconds"
ZEST_CYCLES = "zest_cycles_total"
ZEST_SOURCE_ERRORS = "zest_source_errors_total"
ZEST_LAST_SUCCESS = "zest_last_success_timestamp_seconds"
ZEST_STALE = "zest_estimates_stale"
ZEST_RUNNING_JOBS = "zest_running_jobs"
ZEST_RECORDING_RULES_USED = "zest_source_recording_rules_used"  # 1: recorded tiles read, 0: raw samples

ZEST_Z_EXPECTED = "zest_job_z_expected_ratio"
ZEST_Z_ALGORITHM = "zest_job_algorithm_z_ratio"  # Z of each algorithm: its share of Z_e, or its given Z
ZEST_Z_COVERAGE = "zest_z_interval_coverage_ratio"  # of the model, not per job
ZEST_DURATION = "zest_job_duration_seconds"  # T the break-even assumes, labelled with where it came from
ZEST_REUSE = "zest_job_reuse_runs"  # R
ZEST_BREAKEVEN_GPUS = "zest_job_breakeven_gpus"  # G the break-even uses (the GPUs seen, or the config's)
ZEST_Z_BREAK = "zest_job_z_break_ratio"
ZEST_R_BREAK = "zest_job_r_break_runs"
ZEST_EXPLORATION = "zest_job_exploration_gpu_seconds"  # detail
ZEST_NET_SAVING = "zest_job_net_saving_gpu_seconds"
ZEST_VERDICT = "zest_job_verdict"
#: G · T · R, the GPU time tuning acts on, labelled with the job's recommendation: the one series that
#: carries it, so that each job counts once
ZEST_GPU_TIME_AT_STAKE = "zest_job_gpu_seconds_at_stake"
#: 1: the rule fires; absent: it does not (detail: 0 when checked and silent), or its signals are missing
ZEST_DIAGNOSIS = "zest_job_diagnosis"
# Bounds from the time the job has already run, whatever T is (T is at least that long):
ZEST_ELAPSED = "zest_job_elapsed_seconds"  # detail: from the job's first sample in the source to its latest
#: R_break at T = elapsed, an upper bound: the least over the algorithms, labelled with that algorithm
ZEST_R_BREAK_AT_ELAPSED = "zest_job_r_break_at_elapsed_runs"
ZEST_RUN_SAVING_LOWER_BOUND = "zest_job_run_saving_lower_bound_gpu_seconds"  # G · elapsed · Z_e low


def zest_feature_metric(feature: str) -> str:
    """The per-job series of a feature of the features module (its name carries its unit); detail."""
    return f"zest_job_{feature}"


def zest_gpu_metric(signal: str) -> str:
    """The per-GPU series of a canonical signal's window mean (the signal's name carries its unit); detail."""
    return f"zest_gpu_{signal}"

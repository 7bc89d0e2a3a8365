"""The next-trials arithmetic (estimator.decision.next_trials) against hand-computed values."""

from __future__ import annotations

import math

import pytest

from estimator.decision import breakeven as be
from estimator.decision.breakeven import Job
from estimator.decision.next_trials import (
    HORIZON_TRIALS,
    MIN_COMPLETE_TRIALS,
    NO_CEILING,
    TrialOutcome,
    ZCeiling,
    advise_next_trials,
    cluster_ceiling,
    expected_gain_percent,
    found_z_percent,
    record_improvements,
    search_on_top,
    search_so_far,
)

HALF_HOUR = 1800.0


def outcomes(values: list[float | None], seconds: float = HALF_HOUR) -> list[TrialOutcome]:
    return [TrialOutcome(i, v, seconds) for i, v in enumerate(values)]


# a time objective: 10, 8 (a new best, r = 0.2), 9, 6 (a new best, r = 0.25), a failed trial
STUDY = outcomes([10.0, 8.0, 9.0, 6.0, None])
MU = (0.2 + 0.25) / 2  # 0.225
Q = 4 / 5  # 4 of 5 finished trials completed


def test_search_so_far_reads_default_best_z_and_trial_time() -> None:
    search = search_so_far(STUDY, "time")
    assert search.default_number == 0 and search.default_seconds == 10.0
    assert search.best_seconds == 6.0
    assert search.z_found_percent == pytest.approx(40.0)  # 100 · (1 − 6/10)
    assert (search.finished, search.complete, search.success_rate) == (5, 4, Q)
    assert search.trial_hours == pytest.approx(0.5)


def test_a_named_default_and_a_throughput_objective() -> None:
    assert search_so_far(STUDY, "time", default_number=2).z_found_percent == pytest.approx(100 / 3)
    rising = search_so_far(outcomes([100.0, 125.0]), "throughput")  # samples/s: 1/v is time-like
    assert rising.z_found_percent == pytest.approx(20.0)  # 100 · (1 − 100/125)
    assert record_improvements(rising.seconds) == [pytest.approx(0.2)]
    with pytest.raises(ValueError, match="not a COMPLETE trial"):
        search_so_far(STUDY, "time", default_number=4)
    with pytest.raises(ValueError, match="no COMPLETE trial"):
        search_so_far(outcomes([None, None]), "time")


def test_record_improvements_are_the_new_bests_after_the_first() -> None:
    assert record_improvements([10.0, 8.0, 9.0, 6.0, None]) == [pytest.approx(0.2), pytest.approx(0.25)]
    assert record_improvements([5.0, 5.0, 7.0]) == []  # a tie is no new best


def test_expected_gain_by_hand() -> None:
    # p_1 = q / (n + 1) = 0.8 / 5 = 0.16; p_2 = q / (n + q + 1) = 0.8 / 5.8; left of T: 100 − 40 = 60 %
    assert expected_gain_percent(1, 4, Q, MU, 40.0) == pytest.approx(60 * 0.225 * 0.16)  # 2.16
    two = 60 * (1 - (1 - 0.225 * 0.16) * (1 - 0.225 * 0.8 / 5.8))
    assert two == pytest.approx(3.95503, abs=1e-5)
    assert expected_gain_percent(2, 4, Q, MU, 40.0) == pytest.approx(two)
    # the classical record argument: with every trial completing, the next one is a new best w.p. 1/(n+1)
    assert expected_gain_percent(1, 9, 1.0, 0.5, 0.0) == pytest.approx(100 * 0.5 / 10)
    assert expected_gain_percent(0, 4, Q, MU, 40.0) == 0.0
    assert expected_gain_percent(5, 4, Q, 0.0, 40.0) == 0.0


def brute_force(gain: list[float], duration: float, reuse: float, t: float) -> tuple[int, int]:
    """(trials_that_pay, best_trials) by scanning every k: net(k) = R·T·ΔZ(k)/100 − k·t."""
    net = [0.0] + [reuse * duration * g / 100 - k * t for k, g in enumerate(gain, start=1)]
    paying = [k for k in range(1, len(net)) if net[k] > 0]
    return (max(paying) if paying else 0), max(range(len(net)), key=lambda k: net[k])


@pytest.mark.parametrize(("duration", "reuse"), [(100.0, 1.0), (150.0, 5.0), (500.0, 20.0)])
def test_trials_that_pay_and_best_trials_match_a_scan_of_every_k(duration: float, reuse: float) -> None:
    search = search_so_far(STUDY, "time")
    advice = advise_next_trials(search, Job(duration, 2, reuse), horizon=5000)
    gains = [expected_gain_percent(k, 4, Q, MU, 40.0) for k in range(1, 5001)]
    assert (advice.trials_that_pay, advice.best_trials) == brute_force(gains, duration, reuse, 0.5)
    assert advice.decision == "continue"
    net_best = 2 * (reuse * duration * gains[advice.best_trials - 1] / 100 - advice.best_trials * 0.5)
    assert advice.best_net_saving_gpu_hours == pytest.approx(net_best)


def test_the_batch_is_priced_by_the_break_even_engine() -> None:
    search = search_so_far(STUDY, "time")
    job = Job(100.0, 2, 1.0)
    advice = advise_next_trials(search, job, next_trials=2)
    assert advice.expected_gain.mid == pytest.approx(3.95503, abs=1e-5)
    a = advice.assessment
    assert a is not None
    assert a.exploration_gpu_hours == pytest.approx(2 * 2 * 0.5)  # G · k · t
    assert a.z_break_percent == pytest.approx(be.z_break_percent(2, 0.5, 100.0, 1.0, 2, be.Costs()))  # 1 %
    assert a.net_saving_gpu_hours == pytest.approx(2 * (100 * 3.95503 / 100 - 1.0), abs=1e-4)


def test_a_short_job_reused_once_stops() -> None:
    # T = 10 h, R = 1: the next trial saves 10 · 2.16 / 100 = 0.216 h, less than its t = 0.5 h
    advice = advise_next_trials(search_so_far(STUDY, "time"), Job(10.0, 1, 1.0))
    assert advice.decision == "stop"
    assert advice.trials_that_pay == 0 and advice.best_trials == 0


def test_a_flat_study_expects_nothing_more() -> None:
    advice = advise_next_trials(search_so_far(outcomes([3.0] * 6), "time"), Job(1000.0, 8, 50.0))
    assert advice.mean_improvement == 0.0 and advice.improvements_from == "spread"
    assert advice.expected_gain.mid == 0.0
    assert advice.decision == "stop" and "do not differ" in advice.reason


def test_without_records_the_spread_of_the_values_sizes_a_new_best() -> None:
    # the default (2.0) is the best so far; sorted 2, 2.5, 4: gaps 1 − 2/2.5 = 0.2 and 1 − 2.5/4 = 0.375
    search = search_so_far(outcomes([2.0, 4.0, 2.5]), "time")
    advice = advise_next_trials(search, Job(100.0), next_trials=1)
    assert advice.improvements_from == "spread"
    assert advice.mean_improvement == pytest.approx((0.2 + 0.375) / 2)
    assert advice.expected_gain.mid == pytest.approx(100 * 0.2875 / 4)  # Z so far 0: p_1 = 1/(3 + 1)


def test_too_few_trials_continue_and_say_why() -> None:
    advice = advise_next_trials(search_so_far(outcomes([3.0, 2.0]), "time"), Job(1.0))
    assert advice.search.complete < MIN_COMPLETE_TRIALS
    assert advice.decision == "continue" and "at least" in advice.reason
    assert advice.assessment is None


def test_the_cluster_curves_are_pooled_while_the_study_has_few_records() -> None:
    search = search_so_far(outcomes([10.0, 8.0, 9.0, 9.5]), "time")  # one record of its own: 0.2
    advice = advise_next_trials(search, Job(100.0), cluster_improvements=[0.1, 0.3, 0.4])
    assert advice.improvements_from == "study and cluster"
    assert advice.mean_improvement == pytest.approx((0.2 + 0.1 + 0.3 + 0.4) / 4)
    own = advise_next_trials(search_so_far(STUDY, "time"), Job(100.0), cluster_improvements=[0.9])
    assert own.improvements_from == "study" and own.mean_improvement == pytest.approx(MU)


def test_the_interval_is_a_seeded_bootstrap_around_the_mid() -> None:
    search = search_so_far(outcomes([10.0, 8.0, 7.9, 6.0, 5.0, 4.99, 4.0]), "time")
    first = advise_next_trials(search, Job(100.0), seed=3)
    again = advise_next_trials(search, Job(100.0), seed=3)
    z = first.expected_gain
    assert z == again.expected_gain
    assert z.low < z.mid < z.high
    none = advise_next_trials(search, Job(100.0), bootstrap_samples=0).expected_gain
    assert none.low == none.mid == none.high == pytest.approx(z.mid)


def test_search_on_top_by_hand() -> None:
    # a cheap study found Z = 20 %; shares 0.5 → 0.6: the broader search adds 20 · (0.6/0.5 − 1) = 4 %
    job = Job(150.0, 8, 5.0)
    top = search_on_top(
        20.0, name="black-box", trials=500, trial_hours=25 / 60, cheap_share=0.5, then_share=0.6, job=job
    )
    assert top.z_percent == pytest.approx(4.0)
    a = top.assessment
    assert a.exploration_gpu_hours == pytest.approx(8 * 500 * 25 / 60)  # 1,666.7
    assert a.z_break_percent == pytest.approx(100 * (500 * 25 / 60) / (150 * 5))  # 27.78 %
    assert a.net_saving_gpu_hours == pytest.approx(8 * (5 * 150 * 0.04 - 500 * 25 / 60))
    assert a.verdict is be.Verdict.DOES_NOT_PAY
    pays = search_on_top(
        20.0, name="black-box", trials=500, trial_hours=25 / 60, cheap_share=0.5, then_share=0.6,
        job=Job(2160.0, 8, 20.0),
    )  # fmt: skip
    assert pays.assessment.verdict is be.Verdict.PROCEED  # 20 · 2160 · 0.04 = 1,728 h > 208.3 h
    worse = search_on_top(20.0, name="x", trials=1, trial_hours=1.0, cheap_share=0.7, then_share=0.6, job=job)
    assert worse.z_percent == 0.0 and not math.isfinite(worse.assessment.r_break)


# --- the ceiling and the horizon: a long, much reused job ----------------------------------------------

LONG_REUSED = Job(2160.0, 8, 200.0)  # 90 days, run 200 times


def test_without_a_ceiling_the_gain_tends_to_all_that_is_left_of_t() -> None:
    # the cause: p_j decays as 1/j, so Π (1 − μ p_j) → 0 and ΔZ → 100 − Z_found however small μ is
    far = [expected_gain_percent(10**k, 4, Q, MU, 40.0) for k in (2, 4, 6)]
    assert far[0] < far[1] < far[2] < 60.0
    assert far[2] > 0.9 * 60.0
    # a ceiling caps it at Z_max − Z_found, and leaves the near gains alone
    assert expected_gain_percent(10**6, 4, Q, MU, 40.0, ceiling_percent=45.0) == pytest.approx(5.0)
    assert expected_gain_percent(1, 4, Q, MU, 40.0, ceiling_percent=45.0) == pytest.approx(60 * 0.225 * 0.16)
    assert expected_gain_percent(3, 4, Q, MU, 40.0, ceiling_percent=30.0) == 0.0  # already past it


def test_a_long_reused_job_that_pays_at_the_horizon_says_more_than_the_horizon() -> None:
    advice = advise_next_trials(search_so_far(STUDY, "time"), LONG_REUSED, horizon=300)
    gain = expected_gain_percent(300, 4, Q, MU, 40.0)
    assert LONG_REUSED.reuse * LONG_REUSED.duration_hours * gain / 100 > 300 * 0.5  # the 300th still pays
    assert advice.decision == "continue" and advice.horizon == 300
    assert advice.beyond_horizon and advice.trials_that_pay == 300
    assert "more than 300 more pay" in advice.reason and "not a count" in advice.reason
    assert "up to" not in advice.reason
    assert advice.ceiling is NO_CEILING and "without a ceiling" in advice.reason
    with pytest.raises(ValueError, match="horizon"):
        advise_next_trials(search_so_far(STUDY, "time"), LONG_REUSED, horizon=0)


def test_a_ceiling_bounds_the_gain_and_makes_the_count_a_finding() -> None:
    search = search_so_far(STUDY, "time")  # Z so far 40 %
    ceiling = ZCeiling(45.0, "a test's Z_e high bound")
    advice = advise_next_trials(search, LONG_REUSED, ceiling=ceiling, horizon=HORIZON_TRIALS)
    assert advice.expected_gain.high <= 5.0 + 1e-12
    assert not advice.beyond_horizon and not advice.best_beyond_horizon
    # at the ceiling the saving is flat and each trial costs t: no more than R·T·(Z_max − Z)/(100·t) pay
    bound = LONG_REUSED.reuse * LONG_REUSED.duration_hours * 5.0 / (100 * 0.5)
    assert 1 <= advice.best_trials < advice.trials_that_pay <= bound
    assert "Z at most 45 %" in advice.reason and "a test's Z_e high bound" in advice.reason
    assert advice.ceiling == ceiling


def test_trials_that_pay_under_a_ceiling_match_a_scan_of_every_k() -> None:
    job = Job(500.0, 2, 20.0)
    advice = advise_next_trials(search_so_far(STUDY, "time"), job, ceiling=ZCeiling(42.0, "x"), horizon=5000)
    gains = [min(expected_gain_percent(k, 4, Q, MU, 40.0), 2.0) for k in range(1, 5001)]
    assert (advice.trials_that_pay, advice.best_trials) == brute_force(gains, 500.0, 20.0, 0.5)
    assert not advice.beyond_horizon


def test_a_ceiling_already_reached_stops_and_says_so() -> None:
    advice = advise_next_trials(search_so_far(STUDY, "time"), LONG_REUSED, ceiling=ZCeiling(40.0, "given"))
    assert advice.expected_gain.mid == 0.0
    assert advice.decision == "stop" and advice.trials_that_pay == 0
    assert "already reaches Z_max" in advice.reason


def test_the_cluster_ceiling_is_the_best_z_recorded_while_this_study_is_below_it() -> None:
    assert found_z_percent([10.0, 8.0, None, 6.0]) == pytest.approx(40.0)  # best against the first
    assert math.isnan(found_z_percent([None, None]))
    ceiling = cluster_ceiling([5.0, 30.0, math.nan, 0.0], 20.0)
    assert ceiling is not None and ceiling.percent == 30.0 and "2 recorded studies" in ceiling.source
    assert cluster_ceiling([5.0, 30.0], 35.0) is None  # this study has passed them: no bound on it
    assert cluster_ceiling([], 0.0) is None and cluster_ceiling([0.0], 0.0) is None
    with pytest.raises(ValueError, match=r"0\.\.100"):
        ZCeiling(120.0, "too high")

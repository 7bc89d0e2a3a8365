"""The break-even engine against the worked examples of shared/reference/breakeven.md, and its laws."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from estimator.decision import breakeven as be
from estimator.decision.breakeven import Candidate, Costs, InputError, Job, Verdict, ZInterval, decide

T25 = 25 / 60  # 25 minutes in hours


def digits(value: float, text: str) -> bool:
    """``value`` printed with as many digits as ``text`` shows (the reference's own rounding)."""
    decimals = len(text.partition(".")[2])
    return f"{value:.{decimals}f}" == text


def test_example_1_exploration_cost() -> None:
    job = Job(duration_hours=720, gpus=8)
    a = be.assess(Candidate("heuristic", 100, T25, ZInterval.point(10)), job, Costs())
    assert digits(a.exploration_gpu_hours, "333.3")
    assert digits(8 * be.exploration_hours(100, T25), "333.3")


def test_example_2_speedup_in_trials() -> None:
    delta = be.speedup_hours_per_run(720, 10)
    assert digits(delta, "72")
    assert digits(delta / T25, "172.8")


@pytest.mark.parametrize(
    ("name", "trials", "z", "cost", "slope", "r_break", "first_r"),
    [
        ("heuristic", 30, 10, "12.5", "15.0", "0.833", 1),
        ("black-box", 500, 25, "208.3", "37.5", "5.56", 6),
        ("exhaustive", 2000, 35, "833.3", "52.5", "15.9", 16),
    ],
)
def test_example_3_table(
    name: str, trials: int, z: float, cost: str, slope: str, r_break: str, first_r: int
) -> None:
    a = be.assess(Candidate(name, trials, T25, ZInterval.point(z)), Job(150), Costs())
    assert digits(a.exploration_hours, cost)
    assert digits(a.speedup_hours_per_run, slope)
    assert f"{a.r_break:.3g}" == r_break
    assert a.first_paying_reuse == first_r
    assert a.r_impl == 0 and a.r_break == a.r_explore


def test_example_3_ratios() -> None:
    n_ratio = 500 / 30
    slope_ratio = be.speedup_hours_per_run(150, 25) / be.speedup_hours_per_run(150, 10)
    assert round(n_ratio) == 17
    assert slope_ratio == pytest.approx(2.5)


def test_example_4_continued_pretraining() -> None:
    assert digits(be.speedup_hours_per_run(2160, 10), "216")
    # An exploration cost of 100 h: N * t = 100 with t = 25 min means N = 240.
    r = be.r_explore(240, T25, 2160, 10)
    assert digits(r, "0.463")
    assert math.ceil(r) == 1


def test_example_5_post_training() -> None:
    assert digits(be.speedup_hours_per_run(10, 10), "1")
    cost = be.exploration_hours(30, T25)
    assert digits(cost, "12.5")
    assert digits(be.r_explore(30, T25, 10, 10), "12.5")
    once = be.assess(Candidate("heuristic", 30, T25, ZInterval.point(10)), Job(10, reuse=1), Costs())
    fifty = be.assess(Candidate("heuristic", 30, T25, ZInterval.point(10)), Job(10, reuse=50), Costs())
    assert once.net_saving_gpu_hours < 0 and once.verdict is Verdict.DOES_NOT_PAY
    assert digits(be.total_speedup_hours(10, 10, 50), "50")
    assert fifty.net_saving_gpu_hours == pytest.approx(50 - 12.5)
    assert fifty.verdict is Verdict.PROCEED


def test_implementation_cost_splits_r_break() -> None:
    costs = Costs(engineer_hours=40, gpu_hour_cost=2.0, engineer_hour_cost=100.0)
    job = Job(150, gpus=8)
    a = be.assess(Candidate("heuristic", 30, T25, ZInterval.point(10)), job, costs)
    # R_impl = c_e E / (c_g G T Z/100) = 4000 / (2 * 8 * 15) = 16.67
    assert a.r_impl == pytest.approx(4000 / 240)
    assert a.r_break == pytest.approx(a.r_explore + a.r_impl)
    # Z_break = 100 (N t + c_e E / (c_g G)) / (T R) = 100 (12.5 + 250) / 150
    assert a.z_break_percent == pytest.approx(100 * (12.5 + 250) / 150)
    # net saving in currency: c_g G (R T Z/100 - N t) - c_e E
    assert a.net_saving_cost == pytest.approx(2.0 * 8 * (15 - 12.5) - 4000)
    assert a.net_saving_gpu_hours == pytest.approx(a.net_saving_cost / 2.0)


def test_larger_clusters_recover_implementation_faster() -> None:
    costs = Costs(engineer_hours=40, gpu_hour_cost=2.0, engineer_hour_cost=100.0)
    small = be.r_impl(8, costs, 150, 10)
    large = be.r_impl(64, costs, 150, 10)
    assert large == pytest.approx(small / 8)


def test_verdicts_use_the_interval() -> None:
    assert be.verdict(ZInterval(10, 20, 30), 5) is Verdict.PROCEED
    assert be.verdict(ZInterval(10, 20, 30), 15) is Verdict.MARGINAL
    assert be.verdict(ZInterval(10, 20, 30), 35) is Verdict.DOES_NOT_PAY
    assert be.verdict(ZInterval.point(10), 10) is Verdict.MARGINAL


def test_recommendation_is_best_net_saving_among_proceeds() -> None:
    candidates = [
        Candidate("heuristic", 30, T25, ZInterval.point(10)),
        Candidate("black-box", 500, T25, ZInterval.point(25)),
        Candidate("exhaustive", 2000, T25, ZInterval.point(35)),
    ]
    assert decide(candidates, Job(150, reuse=1)).recommendation == "heuristic"
    assert decide(candidates, Job(150, reuse=16)).recommendation == "black-box"
    assert decide(candidates, Job(150, reuse=200)).recommendation == "exhaustive"
    assert decide(candidates, Job(1, reuse=1)).recommendation is None


def test_ties_go_to_the_cheaper_algorithm() -> None:
    # Same net saving: 10 trials at 10 % vs 20 trials at a Z that adds exactly their extra cost.
    job = Job(100, reuse=1)
    cheap = Candidate("heuristic", 10, 1.0, ZInterval.point(20))  # saves 20 - 10 = 10
    dear = Candidate("black-box", 20, 1.0, ZInterval.point(30))  # saves 30 - 20 = 10
    decision = decide([dear, cheap], job)
    assert decision.assessments[0].net_saving_gpu_hours == decision.assessments[1].net_saving_gpu_hours
    assert decision.recommendation == "heuristic"


def test_marginal_is_not_recommended() -> None:
    decision = decide([Candidate("heuristic", 30, T25, ZInterval(5, 10, 15))], Job(150))
    assert decision.assessments[0].verdict is Verdict.MARGINAL
    assert decision.recommendation is None


def test_zero_improvement_never_pays() -> None:
    a = be.assess(Candidate("heuristic", 30, T25, ZInterval.point(0)), Job(150), Costs())
    assert math.isinf(a.r_break) and a.first_paying_reuse is None
    assert a.verdict is Verdict.DOES_NOT_PAY


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        (lambda: Job(0), "duration_hours"),
        (lambda: Job(-3), "duration_hours"),
        (lambda: Job(10, gpus=0), "gpus"),
        (lambda: Job(10, reuse=0.5), "reuse"),
        (lambda: ZInterval.point(100), "[0, 100)"),
        (lambda: ZInterval.point(-1), "[0, 100)"),
        (lambda: ZInterval(20, 10, 30), "low <= mid <= high"),
        (lambda: Candidate("heuristic", 0, 1.0, ZInterval.point(5)), "trials"),
        (lambda: Candidate("heuristic", 3, 0.0, ZInterval.point(5)), "trial_hours"),
        (lambda: Costs(engineer_hours=5), "gpu_hour_cost"),
        (lambda: Costs(gpu_hour_cost=-1), "gpu_hour_cost"),
        (lambda: decide([], Job(10)), "at least one"),
        (lambda: decide([Candidate("heuristic", 3, 1.0, ZInterval.point(5))] * 2, Job(10)), "once"),
    ],
)
def test_bad_inputs_name_what_is_wrong(build, needle: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=re.escape(needle)):
        build()


# --- laws of the model (property-based) ----------------------------------------

durations = st.floats(min_value=0.1, max_value=1e5)
zs = st.floats(min_value=0.01, max_value=99.9)
trials = st.integers(min_value=1, max_value=10_000)
trial_hours = st.floats(min_value=0.01, max_value=24)
gpus = st.integers(min_value=1, max_value=100_000)
reuses = st.floats(min_value=1, max_value=1e4)


@given(trials, trial_hours, durations, zs, zs)
def test_r_break_falls_as_z_rises(n: int, t: float, duration: float, z1: float, z2: float) -> None:
    lo, hi = sorted((z1, z2))
    assert be.r_explore(n, t, duration, hi) <= be.r_explore(n, t, duration, lo)


@given(trials, trial_hours, durations, durations, zs, gpus)
def test_r_break_falls_as_t_rises(n: int, t: float, d1: float, d2: float, z: float, g: int) -> None:
    lo, hi = sorted((d1, d2))
    costs = Costs(engineer_hours=10, gpu_hour_cost=3, engineer_hour_cost=90)
    r_lo = be.r_explore(n, t, lo, z) + be.r_impl(g, costs, lo, z)
    r_hi = be.r_explore(n, t, hi, z) + be.r_impl(g, costs, hi, z)
    assert r_hi <= r_lo * (1 + 1e-12)


@given(trials, trial_hours, durations, gpus, reuses, reuses)
def test_z_break_times_r_is_constant(n: int, t: float, duration: float, g: int, r1: float, r2: float) -> None:
    costs = Costs(engineer_hours=8, gpu_hour_cost=2.5, engineer_hour_cost=120)
    a = be.z_break_percent(n, t, duration, r1, g, costs) * r1
    b = be.z_break_percent(n, t, duration, r2, g, costs) * r2
    assert a == pytest.approx(b, rel=1e-9)


@given(trials, trial_hours, durations, zs, reuses, gpus, gpus)
def test_gpus_drop_out_without_engineering(
    n: int, t: float, duration: float, z: float, reuse: float, g1: int, g2: int
) -> None:
    candidate = Candidate("heuristic", n, t, ZInterval.point(z))
    a = be.assess(candidate, Job(duration, gpus=g1, reuse=reuse), Costs())
    b = be.assess(candidate, Job(duration, gpus=g2, reuse=reuse), Costs())
    assert a.r_break == b.r_break
    assert a.z_break_percent == b.z_break_percent
    assert a.verdict is b.verdict


@given(trials, trial_hours, durations, zs, reuses)
def test_verdict_agrees_with_net_saving(n: int, t: float, duration: float, z: float, reuse: float) -> None:
    a = be.assess(Candidate("heuristic", n, t, ZInterval.point(z)), Job(duration, reuse=reuse), Costs())
    if a.verdict is Verdict.PROCEED:
        assert a.net_saving_gpu_hours > -1e-9 * a.exploration_gpu_hours
    if a.verdict is Verdict.DOES_NOT_PAY:
        assert a.net_saving_gpu_hours < 1e-9 * a.exploration_gpu_hours

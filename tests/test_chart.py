"""The break-even chart: written as PNG and SVG, and its figure holds what it must to answer at a glance
which algorithm pays at the planned R, and from which R."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from collectors.errors import InputError, OutputError
from estimator.decision.breakeven import Candidate, Costs, Decision, Job, Verdict, ZInterval, decide
from estimator.reports.chart import (
    BREAK_EVEN_GID,
    NET_SAVING_GID,
    PLANNED_REUSE_GID,
    RECOMMENDED_GID,
    RECOMMENDED_MARK,
    ZERO_LINE_GID,
    breakeven_figure,
    plot_breakeven,
)
from estimator.reports.table import fmt

TRIAL_HOURS = 25 / 60


def reference(reuse: float = 16) -> Decision:
    """breakeven.md example 3: T = 150 h, t = 25 min; at R = 16 all proceed and black-box is recommended."""
    return decide(
        [
            Candidate("heuristic", 30, TRIAL_HOURS, ZInterval.point(10)),
            Candidate("black-box", 500, TRIAL_HOURS, ZInterval.point(25)),
            Candidate("exhaustive", 2000, TRIAL_HOURS, ZInterval.point(35)),
        ],
        Job(150, reuse=reuse),
    )


def tiny_heuristic() -> Decision:
    """The bundled example's shape: a 3-trial heuristic (R_break ~0.01) beside a 2000-trial exhaustive search
    (R_break ~23), 8 GPUs, Z intervals, engineering effort."""
    return decide(
        [
            Candidate("heuristic", 3, TRIAL_HOURS, ZInterval(62.3, 67.5, 72.0)),
            Candidate("black-box", 500, TRIAL_HOURS, ZInterval(10.3, 16.3, 35.6)),
            Candidate("exhaustive", 2000, TRIAL_HOURS, ZInterval(15.2, 23.9, 52.2)),
        ],
        Job(150, gpus=8, reuse=5),
        Costs(engineer_hours=1, gpu_hour_cost=2, engineer_hour_cost=100),
    )


def lines(fig: Figure) -> dict[str, Line2D]:
    return {line.get_gid(): line for line in fig.axes[0].get_lines() if line.get_gid()}


def legend_labels(fig: Figure) -> dict[str, str]:
    """Legend text per algorithm name (the text starts with the name)."""
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    return {text.split(" ", 1)[0]: text for text in texts}


def test_png_is_written(tmp_path: Path) -> None:
    target = tmp_path / "breakeven.png"
    plot_breakeven(reference(), target, title="job j1")
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_svg_is_written_and_names_every_algorithm(tmp_path: Path) -> None:
    target = tmp_path / "breakeven.svg"
    plot_breakeven(tiny_heuristic(), target, title="job j1")
    root = ET.parse(target).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    text = target.read_text()
    for name in ("heuristic", "black-box", "exhaustive", "j1"):
        assert name in text  # text is drawn as paths, each preceded by a comment holding it
    assert f'id="{ZERO_LINE_GID}"' in text and f'id="{PLANNED_REUSE_GID}"' in text


def test_unwritable_chart_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="create it first"):
        plot_breakeven(reference(), tmp_path / "missing" / "x.png")
    with pytest.raises(InputError, match=r"\.xyz is not an image format"):
        plot_breakeven(reference(), tmp_path / "x.xyz")


def test_a_net_saving_curve_per_algorithm_from_the_decision_module() -> None:
    decision = reference()
    found = lines(breakeven_figure(decision))
    for a in decision.assessments:
        curve = found[NET_SAVING_GID + a.candidate.name]
        r, net = (np.asarray(v, dtype=float) for v in curve.get_data())
        # the curve holds the table's net saving at the planned R and crosses zero at R_break
        assert np.interp(decision.job.reuse, r, net) == pytest.approx(a.net_saving_gpu_hours, rel=1e-3)
        assert np.interp(a.r_break, r, net) == pytest.approx(0.0, abs=1e-6 * abs(net).max())
        assert net[0] < 0  # R near 0: the exploration is spent, nothing saved yet
        marker = found[BREAK_EVEN_GID + a.candidate.name]
        assert list(marker.get_xdata()) == pytest.approx([a.r_break]) and list(marker.get_ydata()) == [0.0]


def test_zero_line_and_planned_reuse_line() -> None:
    found = lines(breakeven_figure(reference(16)))
    assert list(found[ZERO_LINE_GID].get_ydata()) == [0, 0]
    assert list(found[PLANNED_REUSE_GID].get_xdata()) == [16, 16]


def test_legend_gives_each_verdict_and_first_paying_reuse() -> None:
    decision = tiny_heuristic()
    labels = legend_labels(breakeven_figure(decision))
    assert set(labels) == {"heuristic", "black-box", "exhaustive"}
    for a in decision.assessments:
        label = labels[a.candidate.name]
        assert f": {a.verdict.value};" in label
        assert f"pays from R = {a.first_paying_reuse} " in label
    verdicts = {a.candidate.name: a.verdict for a in decision.assessments}
    assert verdicts == {
        "heuristic": Verdict.PROCEED,
        "black-box": Verdict.MARGINAL,
        "exhaustive": Verdict.DOES_NOT_PAY,
    }  # the figure is tested on all three verdicts


def test_recommendation_is_marked_and_emphasised() -> None:
    decision = reference(16)
    assert decision.recommendation == "black-box"
    fig = breakeven_figure(decision, title="job j1")
    labels = legend_labels(fig)
    assert RECOMMENDED_MARK in labels["black-box"]
    assert all(RECOMMENDED_MARK not in labels[n] for n in ("heuristic", "exhaustive"))
    found = lines(fig)
    widths = {n: found[NET_SAVING_GID + n].get_linewidth() for n in ("heuristic", "black-box", "exhaustive")}
    assert widths["black-box"] > max(widths["heuristic"], widths["exhaustive"])
    star = found[RECOMMENDED_GID]
    assert list(star.get_xdata()) == [16]
    assert list(star.get_ydata()) == pytest.approx([decision.assessments[1].net_saving_gpu_hours])
    titles = fig.get_suptitle() + " " + fig.axes[0].get_title()
    assert "Break-even of tuning" in titles and "job j1" in titles and "recommended: black-box" in titles


def test_no_recommendation_no_star() -> None:
    decision = decide([Candidate("exhaustive", 2000, TRIAL_HOURS, ZInterval.point(1))], Job(150, reuse=2))
    assert decision.recommendation is None
    fig = breakeven_figure(decision)
    assert RECOMMENDED_GID not in lines(fig)
    assert RECOMMENDED_MARK not in legend_labels(fig)["exhaustive"]
    assert "no algorithm pays" in fig.axes[0].get_title()


def test_tiny_heuristic_gets_a_log_axis_showing_every_break_even() -> None:
    decision = tiny_heuristic()
    ax = breakeven_figure(decision).axes[0]
    assert ax.get_xscale() == "log"
    low, high = ax.get_xlim()
    for r in [decision.job.reuse, *(a.r_break for a in decision.assessments)]:
        assert low < r < high
    assert decision.assessments[0].r_break < 0.1 and decision.assessments[2].r_break > 20


def test_close_break_evens_keep_a_linear_axis_from_zero() -> None:
    ax = breakeven_figure(reference(16)).axes[0]
    assert ax.get_xscale() == "linear" and ax.get_xlim()[0] == 0
    assert ax.get_xlim()[1] > 16


def test_band_where_z_is_an_interval() -> None:
    def bands(decision: Decision) -> int:
        ax = breakeven_figure(decision).axes[0]
        return sum(isinstance(c, PolyCollection) for c in ax.collections)

    assert bands(tiny_heuristic()) == 3
    assert bands(reference()) == 0


def test_an_algorithm_that_never_pays_back() -> None:
    decision = decide(
        [
            Candidate("heuristic", 30, TRIAL_HOURS, ZInterval.point(10)),
            Candidate("black-box", 500, TRIAL_HOURS, ZInterval.point(0)),
        ],
        Job(150, reuse=4),
    )
    assert math.isinf(decision.assessments[1].r_break)
    fig = breakeven_figure(decision)
    assert "never pays back" in legend_labels(fig)["black-box"]
    assert BREAK_EVEN_GID + "black-box" not in lines(fig)
    assert BREAK_EVEN_GID + "heuristic" in lines(fig)


def test_break_even_values_on_the_top_axis() -> None:
    decision = tiny_heuristic()
    (top,) = breakeven_figure(decision).axes[0].child_axes
    ticks = list(top.get_xticks())
    assert ticks == pytest.approx([a.r_break for a in decision.assessments])
    assert [t.get_text() for t in top.get_xticklabels()] == [fmt(a.r_break) for a in decision.assessments]

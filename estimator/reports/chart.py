"""The break-even chart: net GPU-hours saved against the reuse count R, one curve per tuning algorithm.

It answers "which algorithm pays at the planned R, and from which R": a curve above the zero line
pays, its crossing of the zero line is its R_break, the planned R is a vertical line, each legend
entry carries the algorithm's verdict, and the recommended algorithm is drawn heavier and starred.
Every number comes from :mod:`estimator.decision.breakeven`: the break-even points, verdicts and the
figures at the planned R are the decision's own; the curves compose that module's formula functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator, StrMethodFormatter

from collectors.errors import InputError, OutputError
from estimator.decision.breakeven import (
    Assessment,
    Decision,
    Verdict,
    exploration_hours,
    implementation_hours,
    total_speedup_hours,
)
from estimator.reports.table import fmt

#: ``gid`` of the figure's parts, so that tests and callers find them without reading colours.
ZERO_LINE_GID = "zero-line"
PLANNED_REUSE_GID = "planned-reuse"
NET_SAVING_GID = "net-saving:"  # + algorithm name
BREAK_EVEN_GID = "break-even:"  # + algorithm name
RECOMMENDED_GID = "recommended"
RECOMMENDED_MARK = "★ recommended"

# A curve's style says its verdict without the legend: solid pays, dashed is marginal, dotted does not pay.
_VERDICT_STYLE = {Verdict.PROCEED: "-", Verdict.MARGINAL: "--", Verdict.DOES_NOT_PAY: ":"}
_LABEL_BOX = {"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.85, "linewidth": 0}
_POINTS = 400
# R spanning more than this ratio is drawn on a log axis: a break-even at R = 0.01 and one at R = 20
# are then both readable.
_LOG_X_SPAN = 20.0


def net_saving_gpu_hours(
    decision: Decision, assessment: Assessment, z_percent: float, reuse: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """G · (R · T · Z/100 − N · t − engineering), GPU-hours, for each reuse count in ``reuse``.

    The same composition of the decision module's formulas as :func:`estimator.decision.breakeven.assess`
    makes for the planned R (its ``net_saving_gpu_hours``), over a range of R.
    """
    job, candidate = decision.job, assessment.candidate
    cost = exploration_hours(candidate.trials, candidate.trial_hours) + implementation_hours(
        job.gpus, decision.costs
    )
    return job.gpus * (total_speedup_hours(job.duration_hours, z_percent, reuse) - cost)


def reuse_range(decision: Decision) -> tuple[float, float, bool]:
    """The R axis: (low, high, log), wide enough to show every finite R_break and the planned R."""
    finite = [a.r_break for a in decision.assessments if math.isfinite(a.r_break) and a.r_break > 0]
    points = [decision.job.reuse, *finite]
    low, high = min(points), max(points)
    if high / low > _LOG_X_SPAN:
        return low / 2.5, high * 1.6, True
    return 0.0, high * 1.3, False


def breakeven_figure(decision: Decision, *, title: str | None = None) -> Figure:
    """The chart as a matplotlib Figure (not saved): net GPU-hours saved against R per algorithm.

    ``title`` names the job (the CLI passes ``"job ID"``). Curves are found by ``gid``:
    ``NET_SAVING_GID + name`` per algorithm, ``ZERO_LINE_GID``, ``PLANNED_REUSE_GID``,
    ``BREAK_EVEN_GID + name`` for each finite break-even point, ``RECOMMENDED_GID`` for the star.
    """
    job = decision.job
    r_low, r_high, log_x = reuse_range(decision)
    reuse = np.geomspace(r_low, r_high, _POINTS) if log_x else np.linspace(r_low, r_high, _POINTS)
    fig = Figure(figsize=(9, 6.2), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    extremes: list[float] = []
    for index, a in enumerate(decision.assessments):
        extremes.extend(_draw_algorithm(ax, decision, a, f"C{index}", reuse))
    ax.axhline(0, color="black", linewidth=1.1, gid=ZERO_LINE_GID, zorder=2)
    ax.axvline(job.reuse, color="black", linestyle="--", linewidth=1.1, gid=PLANNED_REUSE_GID, zorder=2)
    ax.annotate(
        f"planned R = {job.reuse:g}",
        (job.reuse, 1),
        xycoords=("data", "axes fraction"),
        textcoords="offset points",
        xytext=(4, -12),
        fontsize=9,
        bbox=_LABEL_BOX,
    )
    _scale_axes(ax, extremes, (r_low, r_high), log_x=log_x)
    _break_even_axis(ax, decision)
    ax.set_xlabel("reuse count R (runs of the tuned configuration)" + (", log scale" if log_x else ""))
    ax.set_ylabel("net GPU-hours saved by tuning")
    ax.grid(alpha=0.3, which="major")
    name = title or "the job"
    fig.suptitle(f"Break-even of tuning {name}: which algorithm pays at R = {job.reuse:g}?", fontsize=12)
    ax.set_title(
        f"T = {job.duration_hours:g} h on G = {job.gpus} GPU(s); "
        + (f"recommended: {decision.recommendation}" if decision.recommendation else "no algorithm pays"),
        fontsize=10,
    )
    fig.legend(
        loc="outside lower center",
        ncols=1,
        fontsize=8.5,
        title="net saving = G·(R·T·Z/100 − N·t) − engineering; band: Z low to high; "
        "solid proceed, dashed marginal, dotted does not pay",
        title_fontsize=8,
        frameon=False,
    )
    return fig


def _draw_algorithm(
    ax: Axes, decision: Decision, a: Assessment, color: str, reuse: npt.NDArray[np.float64]
) -> list[float]:
    """One algorithm's curve, band, break-even point and planned-R mark; returns its extreme values."""
    job, z = decision.job, a.candidate.z_percent
    recommended = a.candidate.name == decision.recommendation
    mid = net_saving_gpu_hours(decision, a, z.mid, reuse)
    ax.plot(
        reuse,
        mid,
        color=color,
        linestyle=_VERDICT_STYLE[a.verdict],
        linewidth=3.2 if recommended else 1.6,
        label=legend_label(decision, a),
        gid=NET_SAVING_GID + a.candidate.name,
        zorder=4 if recommended else 3,
    )
    extremes = [float(mid.min()), float(mid.max())]
    if z.low != z.high:
        low = net_saving_gpu_hours(decision, a, z.low, reuse)
        high = net_saving_gpu_hours(decision, a, z.high, reuse)
        ax.fill_between(reuse, low, high, color=color, alpha=0.15, linewidth=0)
    if math.isfinite(a.r_break) and a.r_break > 0:
        ax.plot(
            [a.r_break],
            [0.0],
            marker="o",
            markersize=7,
            markeredgecolor="black",
            color=color,
            linestyle="none",
            gid=BREAK_EVEN_GID + a.candidate.name,
            zorder=5,
        )
        # a faint guide up to its value on the top axis, where labels cannot cover the curves
        ax.axvline(a.r_break, color=color, linewidth=0.9, alpha=0.45, linestyle=(0, (1, 2)), zorder=1)
    # the table's figure at the planned R, on the curve
    ax.plot(
        [job.reuse],
        [a.net_saving_gpu_hours],
        marker="*" if recommended else "D",
        markersize=16 if recommended else 6,
        markeredgecolor="black",
        color=color,
        linestyle="none",
        gid=RECOMMENDED_GID if recommended else None,
        zorder=6,
    )
    if recommended:
        ax.annotate(
            f"{a.candidate.name}: {a.net_saving_gpu_hours:+,.0f} GPU-h at R = {job.reuse:g}",
            (job.reuse, a.net_saving_gpu_hours),
            textcoords="offset points",
            xytext=(-12, 8),
            horizontalalignment="right",
            fontsize=9,
            fontweight="bold",
            color=color,
            bbox=_LABEL_BOX,
            zorder=6,
        )
    return extremes


def legend_label(decision: Decision, a: Assessment) -> str:
    """``name (N, Z): verdict, pays from R = k (R_break), net ... at planned R``, starred when recommended."""
    z = a.candidate.z_percent
    z_text = fmt(z.mid) if z.low == z.high else f"{fmt(z.mid)} ({fmt(z.low)}-{fmt(z.high)})"
    first = a.first_paying_reuse
    pays = f"pays from R = {first} (R_break {fmt(a.r_break)})" if first is not None else "never pays back"
    label = (
        f"{a.candidate.name} (N = {a.candidate.trials}, Z = {z_text} %): {a.verdict.value}; {pays}; "
        f"net {a.net_saving_gpu_hours:+,.0f} GPU-h at R = {decision.job.reuse:g}"
    )
    return f"{label}   {RECOMMENDED_MARK}" if a.candidate.name == decision.recommendation else label


def _scale_axes(ax: Axes, extremes: Sequence[float], reuse: tuple[float, float], *, log_x: bool) -> None:
    """Log x when R spans decades (a break-even at R = 0.01 stays apart from one at R = 20); y linear, with
    thousands separators; green above the zero line (tuning pays), red below."""
    ax.set_xlim(*reuse)
    if log_x:
        ax.set_xscale("log")
    top, bottom = max([*extremes, 0.0]), min([*extremes, 0.0])
    pad = 0.08 * (top - bottom or 1.0)
    ax.set_ylim(bottom - pad, top + pad)
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.axhspan(0, top + pad, color="tab:green", alpha=0.06, linewidth=0, zorder=0)
    ax.axhspan(bottom - pad, 0, color="tab:red", alpha=0.04, linewidth=0, zorder=0)


def _break_even_axis(ax: Axes, decision: Decision) -> None:
    """Each finite R_break as a tick of the top axis, in its algorithm's colour."""
    shown = [(f"C{i}", a.r_break) for i, a in enumerate(decision.assessments) if math.isfinite(a.r_break)]
    top = ax.secondary_xaxis("top")
    top.set_xticks([r for _, r in shown], labels=[fmt(r) for _, r in shown], fontsize=8.5)
    top.xaxis.set_minor_locator(NullLocator())
    for label, (color, _) in zip(top.get_xticklabels(), shown, strict=True):
        label.set_color(color)
        label.set_fontweight("bold")
    top.set_xlabel("break-even R (R_break) per algorithm", fontsize=8.5)


def plot_breakeven(decision: Decision, path: Path, *, title: str | None = None) -> None:
    """Draw :func:`breakeven_figure` to ``path``, a PNG (or the format its suffix names: .svg, .pdf).

    Raises :class:`InputError` for a suffix matplotlib cannot write, :class:`OutputError` when the file
    cannot be written.
    """
    check_chart_path(path)
    fig = breakeven_figure(decision, title=title)
    try:
        fig.savefig(path)
    except OSError as exc:
        raise OutputError(
            f"cannot write the chart {path} ({exc.strerror or exc}): check that its folder exists and is "
            "writable"
        ) from None


def check_chart_path(path: Path) -> None:
    """Refuse, before any work, a suffix matplotlib cannot write (no suffix is a PNG) or a missing folder."""
    if not path.parent.is_dir():
        raise OutputError(f"cannot write the chart {path}: {path.parent} is not a folder; create it first")
    suffix = path.suffix.lower().removeprefix(".")
    if suffix and suffix not in FigureCanvasBase.get_supported_filetypes():
        raise InputError(
            f"cannot draw a chart as {path.name}: .{suffix} is not an image format matplotlib writes; "
            "name the file .png (or .pdf, .svg)"
        )

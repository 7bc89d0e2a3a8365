"""The break-even chart of the reference: cumulative speedup against reuse count per algorithm."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.backend_bases import FigureCanvasBase

from collectors.errors import InputError, OutputError
from estimator.decision.breakeven import Decision, implementation_hours, total_speedup_hours

_LABEL_BOX = {"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.8, "linewidth": 0}


def plot_breakeven(decision: Decision, path: Path, *, title: str | None = None) -> None:
    """Draw, per algorithm, R · T · Z/100 against R (band: Z low to high), its cost as a dotted line,
    its break-even point, and the planned R; write it to ``path``, a PNG (or the format its suffix names).

    Raises :class:`InputError` for a suffix matplotlib cannot write, :class:`OutputError` when the file
    cannot be written.
    """
    check_chart_path(path)
    job = decision.job
    engineering = implementation_hours(job.gpus, decision.costs)
    finite = [a.r_break for a in decision.assessments if math.isfinite(a.r_break)]
    r_max = max([job.reuse, *finite, 1.0]) * 1.25
    reuse = np.linspace(0.0, r_max, 200)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for index, a in enumerate(decision.assessments):
        color = f"C{index}"
        z = a.candidate.z_percent
        mid = total_speedup_hours(job.duration_hours, z.mid, reuse)
        label = f"{a.candidate.name} (N={a.candidate.trials}, Z={z.mid:.3g}%)"
        ax.plot(reuse, mid, color=color, label=label)
        if z.low != z.high:
            ax.fill_between(
                reuse,
                total_speedup_hours(job.duration_hours, z.low, reuse),
                total_speedup_hours(job.duration_hours, z.high, reuse),
                color=color,
                alpha=0.15,
                linewidth=0,
            )
        cost = a.exploration_hours + engineering
        ax.axhline(cost, color=color, linestyle=":", linewidth=1.2)
        if math.isfinite(a.r_break):
            ax.plot([a.r_break], [cost], marker="o", color=color)
            ax.annotate(
                f"R_break {a.r_break:.3g}",
                (a.r_break, cost),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=8,
                color=color,
                bbox=_LABEL_BOX,
            )
    ax.axvline(job.reuse, color="black", linestyle="--", linewidth=1)
    ax.annotate(
        f"planned R = {job.reuse:g}",
        (job.reuse, 1),
        xycoords=("data", "axes fraction"),
        textcoords="offset points",
        xytext=(4, -12),
        fontsize=8,
        bbox=_LABEL_BOX,
    )
    ax.set_xlim(0, r_max)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("reuse count R")
    ax.set_ylabel("hours per GPU")
    ax.set_title(title or f"Cumulative speedup vs exploration cost (T = {job.duration_hours:g} h)")
    cost_label = "exploration + engineering" if engineering else "exploration cost"
    # below the axes, so that it hides neither the curves nor the labels
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.13),
        ncols=min(3, len(decision.assessments)),
        fontsize=8,
        title=f"solid: R·T·Z/100 (band: Z low to high)   dotted: {cost_label}",
        title_fontsize=8,
        frameon=False,
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise OutputError(
            f"cannot write the chart {path} ({exc.strerror or exc}): check that its folder exists and is "
            "writable"
        ) from None
    finally:
        plt.close(fig)


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

"""Commands of the Z_e model: ``zest simulate``, ``zest train`` and ``zest evaluate``.

Thin: parse, call the stages, print. The project's errors (:class:`SpecError`,
:class:`estimator.training.rows.DataError`, :class:`estimator.model.regressor.ModelError`,
:class:`CaptureWriteError`) propagate to the ``zest`` group, which maps them to
exit codes. The group adds these commands with ``cli.add_command``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import click
import pandas as pd

from collectors.errors import InputError, OutcomesError, OutputError
from collectors.files import write_capture
from collectors.studies.store import read_outcomes
from collectors.util import user_cache_dir
from estimator.cli.options import DurationType, IntIn, capture_output_options, check_output
from estimator.cli.outcomes import resolved_store, store_option
from estimator.model.local import evaluate_local, fit_local_model, local_metadata, render_local_markdown
from estimator.model.regressor import (
    DEFAULT_ARTIFACT,
    ZeRegressor,
    load_base_model,
    local_model_path,
    save_model,
    trained_model_path,
)
from estimator.perfmodel import iteration as perfmodel
from estimator.perfmodel.iteration import JobSpec
from estimator.training.evaluation import (
    Evaluation,
    capture_share_table,
    default_capture_shares,
    evaluate,
    render_markdown,
    update_card,
)
from estimator.training.outcomes import curve_capture_shares, learning_curves, local_rows
from estimator.training.rows import (
    DATA_FILE,
    DEFAULT_MINUTES,
    DEFAULT_SEED,
    DEFAULT_SIMULATED_STUDIES,
    STUDY,
    Z_PERCENT,
    StudyData,
    artifact_metadata,
    fit_model,
    model_rows,
    read_study_data,
)

#: Where ``zest train`` caches its simulated rows by default; never inside the installed package.
CACHE_FOLDER: Final = "training-rows"
GIB: Final = 1024**3
#: A fixed default start keeps ``zest simulate`` deterministic for a seed.
DEFAULT_START: Final = "2026-11-01T00:00:00"


def _data_options(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option(
        "--simulated-studies",
        type=IntIn(min=0),
        default=DEFAULT_SIMULATED_STUDIES,
        show_default=True,
        help="Studies simulated by the performance model beside the measured ones (A100/H100/H200, 1-512 "
        "GPUs, Megatron and FSDP; labels simulated, scored apart); 0: the measured rows alone.",
    )(command)
    command = click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        show_default="training-rows in the user's cache directory",
        help="Folder for the simulated training rows (rebuilt when the data, constants or code change).",
    )(command)
    return click.option(
        "--data",
        "data_dir",
        type=click.Path(file_okay=False, path_type=Path),
        help=f"Folder holding the measured vTrain table {DATA_FILE} (in a checkout: ../shared/data/vtrain). "
        "[required, except for zest train --with-outcomes]",
    )(command)


@click.command("simulate")
@click.option(
    "--spec",
    "spec_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Job spec JSON: gpu, num_gpus, model shape, batch and parallel layout.",
)
@click.option(
    "--job-id", help="Job id the capture's samples carry. [required with --output, unless --predict]"
)
@capture_output_options("Capture file to write (zest Parquet). [required unless --predict]", required=False)
@click.option(
    "--predict",
    is_flag=True,
    help="Print the performance model's prediction for the spec as JSON (iteration time, tokens/s, MFU, "
    "memory per GPU) instead of writing a capture.",
)
@click.option(
    "--minutes",
    type=DurationType("m"),
    default=15.0,
    show_default=True,
    help="Length of the capture at 1 Hz: minutes (15), or with a unit (90s, 2h); > 0.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the simulated noise.")
@click.option(
    "--start",
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    default=DEFAULT_START,
    show_default=True,
    help="Time of the first sample, UTC.",
)
def simulate(
    spec_path: Path,
    job_id: str | None,
    output: Path | None,
    force: bool,
    predict: bool,
    minutes: float,
    seed: int,
    start: datetime,
) -> None:
    """Simulate the telemetry a training job would show, from the performance model, as a capture file;
    or, with --predict, print the model's prediction of its speed and memory."""
    if predict:
        if output is not None:
            raise click.UsageError("--predict prints a prediction and writes no capture: drop --output")
        spec = JobSpec.from_json(spec_path)
        # full precision: the performance model's own figures, compared against it (not an estimate)
        click.echo(json.dumps(prediction_document(spec, perfmodel.load_constants(spec.gpu)), indent=2))
        return
    if output is None or job_id is None:
        raise click.UsageError("--output FILE and --job-id ID are required to write a capture (or --predict)")
    check_output(output, force)
    spec = JobSpec.from_json(spec_path)
    constants = perfmodel.load_constants(spec.gpu)
    frame = perfmodel.simulate_telemetry(
        spec, constants, job_id=job_id, minutes=minutes, seed=seed, start=pd.Timestamp(start, tz="UTC")
    )
    layout = f"t={spec.tensor_parallel} p={spec.pipeline_parallel} d={spec.data_parallel}"
    write_capture(
        frame,
        output,
        notes=[
            f"simulated by zest simulate (performance model, not measured) from {spec_path.name}: "
            f"{spec.num_gpus} x {spec.gpu}, {layout}, micro-batch {spec.micro_batch}, "
            f"recompute {spec.recompute}, seed {seed}"
        ],
    )
    click.echo(f"wrote {minutes:g} min of simulated telemetry of {spec.num_gpus} GPUs to {output}")


def prediction_document(spec: JobSpec, constants: perfmodel.PerfConstants) -> dict[str, Any]:
    """What ``zest simulate --predict`` prints: one iteration of ``spec`` as the performance model sees it."""
    breakdown = perfmodel.iteration(spec, constants)
    seconds = {
        name.removesuffix("_seconds"): getattr(breakdown, name)
        for name in (
            "compute_seconds",
            "recompute_seconds",
            "bubble_seconds",
            "tp_comm_exposed_seconds",
            "pp_comm_exposed_seconds",
            "dp_comm_exposed_seconds",
            "optimizer_seconds",
            "overhead_seconds",
        )
    }
    return {
        "gpu": spec.gpu,
        "num_gpus": spec.num_gpus,
        "iteration_seconds": breakdown.total_seconds,
        "tokens_per_second": perfmodel.tokens_per_second(spec, breakdown),
        "mfu": breakdown.mfu_ratio,
        "memory_gib_per_gpu": breakdown.memory_bytes_per_gpu / GIB,
        "memory_capacity_gib": breakdown.memory_capacity_bytes / GIB,
        "fits": breakdown.fits,
        "iteration_breakdown_seconds": seconds,
        "source": "predicted by zest's performance model (models/README.md), not measured",
    }


@click.command("train")
@_data_options
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    show_default="models in the user's data directory, which estimates then use",
    help=f"Folder to write {DEFAULT_ARTIFACT}.skops and {DEFAULT_ARTIFACT}.json to (created if missing); "
    "models/ of a checkout rebuilds the shipped model.",
)
@click.option(
    "--with-outcomes",
    is_flag=True,
    help="Correct the shipped model with the recorded tuning outcomes (zest record) and write a local "
    "model to the user's data directory, which estimates then prefer; needs no vTrain data.",
)
@store_option
def train(
    simulated_studies: int,
    data_dir: Path | None,
    cache_dir: Path | None,
    output_dir: Path | None,
    with_outcomes: bool,
    store_path: Path | None,
) -> None:
    """Train the Z_e model on the measured data (deterministic) and write it with its metadata."""
    if with_outcomes:
        _train_local(resolved_store(store_path))
        return
    data = read_study_data(_required_data(data_dir))
    output_dir = trained_model_path().parent if output_dir is None else output_dir
    _make_folder(output_dir)  # before the training, not after it
    rows = _model_rows(data, simulated_studies, cache_dir)
    model = fit_model(rows)
    shares = default_capture_shares(capture_share_table(data.frame))
    metadata = artifact_metadata(data, rows, model, shares, minutes=DEFAULT_MINUTES, seed=DEFAULT_SEED)
    model_path, json_path = save_model(model, output_dir / f"{DEFAULT_ARTIFACT}.skops", metadata)
    click.echo(
        f"trained on {len(rows)} configurations of {rows[STUDY].nunique()} studies ({len(data.frame)} "
        f"measured, {len(rows) - len(data.frame)} simulated; interval widened by "
        f"{model.interval_adjustment_:.2f} pp x (1 + distance / {model.distance_scale_:.2f}) for "
        f"{100 * model.coverage:.0f} % coverage)"
    )
    click.echo(f"wrote {model_path} ({model_path.stat().st_size / 1024**2:.2f} MiB) and {json_path}")


def _model_rows(data: StudyData, simulated_studies: int, cache_dir: Path | None) -> pd.DataFrame:
    """The measured rows and ``simulated_studies`` simulated studies' (on every core), cached."""
    return model_rows(
        data,
        simulated_studies=simulated_studies,
        minutes=DEFAULT_MINUTES,
        seed=DEFAULT_SEED,
        cache_dir=_cache(cache_dir),
        workers=os.cpu_count() or 1,
    )


def _required_data(data_dir: Path | None) -> Path:
    if data_dir is None:
        raise click.UsageError(
            f"--data DIR is required: the folder holding the measured vTrain table {DATA_FILE} "
            "(in a checkout of zest: ../shared/data/vtrain)"
        )
    return data_dir


def _cache(cache_dir: Path | None) -> Path:
    """The training rows' cache: the one given, else in the user's cache directory (read when run)."""
    return user_cache_dir() / CACHE_FOLDER if cache_dir is None else cache_dir


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {folder} ({exc.strerror}): pass another --output-dir") from None


def _train_local(store_path: Path) -> None:
    """Fit and write the local model from the store's rows alone, over the shipped model."""
    recorded = read_outcomes(store_path)
    if recorded is None:
        raise OutcomesError(f"no outcomes store at {store_path}: record studies with zest record --source")
    studies, trials = recorded
    rows = local_rows(studies, trials)
    have = int(rows["study"].nunique()) if not rows.empty else 0
    if have < 2:
        raise OutcomesError(
            f"{store_path} holds trials with telemetry in {have} studies; a local model needs 2 or more: "
            "record studies with zest record --source"
        )
    shipped = load_base_model()
    assert isinstance(shipped.model, ZeRegressor)  # load_base_model refuses anything else
    model = fit_local_model(shipped.model, rows)
    shipped_shares = shipped.metadata.get("capture_shares", {})
    from_curves = curve_capture_shares(learning_curves(studies, trials), shipped_shares)
    shares = from_curves if from_curves is not None else shipped_shares
    metadata = local_metadata(model, shipped.metadata, rows, studies, shares, store=str(store_path))
    path = local_model_path()
    _make_folder(path.parent)
    model_path, json_path = save_model(model, path, metadata)
    click.echo(
        f"corrected the shipped model with {len(rows)} trials of {have} local studies "
        f"(local weight {model.local_weight_:.2f}; {metadata['model']['correction']})"
    )
    listed = ", ".join(f"{name} {entry['share']:.2f}" for name, entry in shares.get("shares", {}).items())
    origin = "black-box from the recorded learning curves" if from_curves is not None else "as shipped"
    click.echo(f"capture shares {origin}: {listed}")
    click.echo(f"wrote {model_path} and {json_path}; estimates now use it")


@click.command("evaluate")
@_data_options
@click.option(
    "--card",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Model card whose evaluation section (between its markers) is rewritten (models/README.md of a "
    "checkout); without it the evaluation is only printed.",
)
@click.option(
    "--held-out",
    "held_out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Also score the shipped model, not refitted, on llm-foundry's measured MPT tables under DIR (the "
    "folder holding llm-foundry/; in a checkout: ../shared/data); with --card, written between the card's "
    "held-out markers.",
)
@store_option
def evaluate_command(
    simulated_studies: int,
    data_dir: Path | None,
    cache_dir: Path | None,
    card: Path | None,
    held_out_dir: Path | None,
    store_path: Path | None,
) -> None:
    """Grouped cross-validation of the Z_e model against three baselines, and with --held-out the shipped
    model on measured studies it never saw; print them, update a model card."""
    text = None
    if card is not None:
        try:
            text = card.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot read model card {card} ({exc.strerror}): pass --card FILE") from None
    data = read_study_data(_required_data(data_dir))
    rows = _model_rows(data, simulated_studies, cache_dir)
    evaluation = evaluate(data, rows)
    section = render_markdown(evaluation)
    click.echo(section)
    held_section = None
    if held_out_dir is not None:
        held_section = _held_out_section(held_out_dir, data, evaluation)
        click.echo("\n" + held_section)
    if card is not None and text is not None:
        try:
            updated = update_card(text, section)
        except ValueError as exc:
            raise InputError(f"{card}: {exc}; add them where the evaluation belongs") from None
        if held_section is not None:
            from estimator.training.heldout import HELD_OUT_BEGIN, HELD_OUT_END

            try:
                updated = update_card(updated, held_section, begin=HELD_OUT_BEGIN, end=HELD_OUT_END)
            except ValueError as exc:
                raise InputError(f"{card}: {exc}; add them where the held-out evaluation belongs") from None
        try:
            card.write_text(updated, encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot write model card {card} ({exc.strerror})") from None
        sections = "evaluation and held-out sections" if held_section is not None else "evaluation section"
        click.echo(f"\nupdated the {sections} of {card}")
    # this cluster's results: printed, not written into the shipped model's card
    click.echo("\n" + local_outcomes_section(resolved_store(store_path)))


def _held_out_section(held_out_dir: Path, data: StudyData, evaluation: Evaluation) -> str:
    """The shipped model on llm-foundry's measured tables under ``held_out_dir``, beside vTrain's figures."""
    from estimator.model.regressor import load_default_model
    from estimator.training.heldout import (
        evaluate_held_out,
        held_out_rows,
        read_mpt_studies,
        render_held_out_markdown,
    )

    held_out = read_mpt_studies(held_out_dir)
    rows = held_out_rows(held_out, minutes=DEFAULT_MINUTES, seed=DEFAULT_SEED)
    training_mean = float(data.frame[Z_PERCENT].mean())  # the shipped model's rows: all of vTrain
    scored = evaluate_held_out(held_out, rows, load_default_model(), training_mean=training_mean)
    return render_held_out_markdown(scored, held_out, evaluation)


def local_outcomes_section(store_path: Path) -> str:
    """The evaluation on the recorded outcomes, grouped by study, or why there is none."""
    recorded = read_outcomes(store_path)
    if recorded is None:
        return f"Local outcomes: none; no outcomes store at {store_path} (zest record writes one)."
    rows = local_rows(*recorded)
    if rows.empty:
        return (
            f"Local outcomes: none; {store_path} holds no trial with telemetry "
            "(zest record --source gives trials their telemetry)."
        )
    shipped = load_base_model().model
    assert isinstance(shipped, ZeRegressor)  # load_base_model refuses anything else
    return render_local_markdown(evaluate_local(shipped, rows), float(shipped.coverage))

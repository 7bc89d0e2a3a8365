"""A Hopper tuning study in one command: GPT training steps swept over a throughput tuner's knobs.

For each configuration of a GPT-style model (bf16 autocast, synthetic tokens,
fixed seed) at two sizes, on one GPU, this warms up, then trains for
``--measure-s`` seconds while zest's own NVML collector
(:class:`collectors.nvml.NvmlSource`, GPM included where the GPU has it)
samples every field at ``--interval-s`` in a background thread. The knobs are
the ones a tuner sweeps on one GPU: micro-batch with gradient accumulation to
a fixed global batch, activation checkpointing, fused vs unfused AdamW, and
``torch.compile``.

Per configuration it writes ``<out>/<config>.parquet`` (a zest capture whose
job id and notes name the configuration) and appends one row to
``<out>/results.csv`` (tokens/s, iteration time, peak memory, GPU, driver,
torch and CUDA versions), flushed at once, so whatever the run gets through is
kept. Configurations run cheapest and most informative first; each one's time
(setup, warm-up, compile, measurement) is estimated before it starts and it is
skipped, and said so, when it would not end within ``--budget-s`` of the
start.

``--preset tiny`` runs the same sweep with a model of a few thousand
parameters, on the CPU where no GPU is: tests/test_gpu_study.py runs it
against the fake NVML driver.

Run: ``python bench/gpu_study.py --budget-s 480 --out study`` (bench/GPU_STUDY.md).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from collectors.errors import SourceUnavailable
from collectors.files import write_capture
from collectors.nvml import NvmlCapture, NvmlModule, NvmlSource

SEED = 1234
RESULTS_CSV = "results.csv"
#: Columns of results.csv, in order; a unit ends each measured quantity's name.
RESULT_COLUMNS = (
    "config",
    "preset",
    "size",
    "params",
    "seq_len",
    "global_batch",
    "micro_batch",
    "grad_accum",
    "activation_checkpointing",
    "fused_optimizer",
    "compiled",
    "status",
    "tokens_per_second",
    "iteration_seconds",
    "steps_measured",
    "measured_seconds",
    "warmup_seconds",
    "estimated_seconds",
    "elapsed_seconds",
    "peak_mem_bytes",
    "samples",
    "capture",
    "device",
    "gpu_name",
    "driver_version",
    "torch_version",
    "cuda_version",
    "started_utc",
    "error",
)


# -- what is swept -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSize:
    """A GPT shape and the global batch every configuration of it trains with."""

    name: str
    n_layer: int
    n_head: int
    d_model: int
    seq_len: int
    vocab: int
    global_batch: int  # sequences per optimizer step
    setup_seconds: float  # prior: build the model and its optimizer, one warm-up step's worth of launch
    warmup_seconds: float  # prior: the warm-up steps, without compile
    compile_seconds: float  # prior: what torch.compile adds to the warm-up


@dataclass(frozen=True)
class StudyConfig:
    """One point of the sweep."""

    size: str
    micro_batch: int
    grad_accum: int
    activation_checkpointing: bool
    fused_optimizer: bool
    compiled: bool

    @property
    def name(self) -> str:
        return (
            f"{self.size}-mb{self.micro_batch}-ga{self.grad_accum}"
            f"-ckpt{int(self.activation_checkpointing)}-fused{int(self.fused_optimizer)}"
            f"-compile{int(self.compiled)}"
        )


#: GPT-2 small and GPT-3 XL shapes (vocabulary padded to a multiple of 64). At 32 x 1024
#: tokens a step, the 1.3B model's fp32 weights, gradients and AdamW state (~21 GB) and
#: its micro-batch-32 activations without checkpointing (~60 GB) fit an 80 GB H100 too.
HOPPER_SIZES = (
    ModelSize("gpt-125m", 12, 12, 768, 1024, 50304, 32, 2.0, 4.0, 40.0),
    ModelSize("gpt-1.3b", 24, 16, 2048, 1024, 50304, 32, 4.0, 8.0, 60.0),
)
#: A few thousand parameters: the same sweep on a CPU in seconds.
TINY_SIZES = (
    ModelSize("tiny-a", 2, 2, 32, 32, 128, 8, 0.3, 0.3, 20.0),
    ModelSize("tiny-b", 3, 2, 48, 32, 128, 8, 0.3, 0.3, 25.0),
)
PRESETS = {"hopper": HOPPER_SIZES, "tiny": TINY_SIZES}


def sweep(sizes: Sequence[ModelSize]) -> list[StudyConfig]:
    """The configurations, cheapest and most informative first.

    Each size's baseline first (a quarter of the global batch per micro-batch,
    fused AdamW, no checkpointing, eager), then one knob at a time from that
    baseline, the small model before the large: the micro-batch (the knob that
    moves throughput most), ``torch.compile`` on the small model (its compile is
    the cheaper one), checkpointing, the optimizer, then the large model's
    compile and the combinations. A budget cut short still leaves a baseline per
    size and the effect of each knob on at least one size.
    """
    small, large = sizes

    def at(
        size: ModelSize, micro: int, ckpt: bool = False, fused: bool = True, comp: bool = False
    ) -> StudyConfig:
        return StudyConfig(size.name, micro, size.global_batch // micro, ckpt, fused, comp)

    def micro(size: ModelSize, share: int) -> int:
        return max(1, size.global_batch // share)

    base_small, base_large = micro(small, 4), micro(large, 4)
    return [
        at(small, base_small),
        at(large, base_large),
        at(small, micro(small, 1)),  # no accumulation: one big micro-batch
        at(large, micro(large, 1)),
        at(small, micro(small, 16)),  # much accumulation: small micro-batches
        at(large, micro(large, 16)),
        at(small, base_small, comp=True),
        at(small, base_small, ckpt=True),
        at(large, base_large, ckpt=True),
        at(small, base_small, fused=False),
        at(large, base_large, fused=False),
        at(large, base_large, comp=True),
        at(large, micro(large, 1), ckpt=True),  # checkpointing pays where it lets the micro-batch grow
        at(large, micro(large, 1), comp=True),
    ]


def estimate_seconds(
    config: StudyConfig,
    sizes: Sequence[ModelSize],
    measure_seconds: float,
    seen: dict[tuple[str, bool], float],
) -> float:
    """Seconds ``config`` is expected to take: setup, warm-up (and compile), measurement, writing.

    ``seen`` holds what earlier runs took beyond their measurement, by size and
    compile setting; it replaces the priors once there is one. A size not yet
    compiled takes the larger of its prior compile time and another size's
    measured one scaled by the number of layers (Dynamo unrolls them).
    """
    by_name = {s.name: s for s in sizes}
    size = by_name[config.size]
    overhead = seen.get((config.size, config.compiled))
    if overhead is None:
        overhead = seen.get((config.size, False), size.setup_seconds + size.warmup_seconds)
        if config.compiled:
            compile_seconds = size.compile_seconds
            for (name, compiled), seconds in seen.items():
                eager = seen.get((name, False))
                if compiled and eager is not None:
                    scaled = (seconds - eager) * size.n_layer / by_name[name].n_layer
                    compile_seconds = max(compile_seconds, scaled)
            overhead += compile_seconds
    return overhead + measure_seconds + 1.0  # one second to write the capture and the row


# -- sampling ---------------------------------------------------------------------------------------


class BackgroundSampler:
    """Runs one :meth:`NvmlSource.sample` window in a thread while the caller trains."""

    def __init__(
        self, source: NvmlSource, window_seconds: float, interval_seconds: float, job_id: str
    ) -> None:
        self._source = source
        self._window = window_seconds
        self._interval = interval_seconds
        self._job_id = job_id
        self.capture: NvmlCapture | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"nvml-{job_id}", daemon=True)

    def _run(self) -> None:
        try:
            self.capture = self._source.sample(self._window, self._interval, job_id=self._job_id)
        except BaseException as exc:  # handed to the training thread, which raises it
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    def running(self) -> bool:
        return self._thread.is_alive()

    def result(self) -> NvmlCapture:
        """Wait for the window to end; its capture, or the error the sampler raised."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.capture is not None
        return self.capture


# -- the training step (PyTorch) -------------------------------------------------------------------


@dataclass
class Measurement:
    """What one configuration measured."""

    status: str  # "ok"; "oom" when it does not fit the GPU's memory; "error" when torch failed otherwise
    tokens_per_second: float
    iteration_seconds: float  # mean time of one optimizer step (all its micro-batches)
    steps_measured: int
    measured_seconds: float
    warmup_seconds: float  # setup, warm-up steps and compile
    peak_mem_bytes: float
    params: int
    capture: NvmlCapture | None
    error: str = ""  # why a configuration that did not run did not: the exception's first line


def build_model(torch: Any, size: ModelSize, checkpointing: bool) -> Any:
    """A pre-norm GPT: token and position embeddings, causal attention blocks, tied output head."""
    nn = torch.nn
    module: Any = nn.Module  # torch is handed in, so its classes are Any to the type checker
    functional = torch.nn.functional
    checkpoint = torch.utils.checkpoint.checkpoint

    class Block(module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(size.d_model)
            self.qkv = nn.Linear(size.d_model, 3 * size.d_model)
            self.proj = nn.Linear(size.d_model, size.d_model)
            self.ln2 = nn.LayerNorm(size.d_model)
            self.fc = nn.Linear(size.d_model, 4 * size.d_model)
            self.out = nn.Linear(4 * size.d_model, size.d_model)

        def forward(self, x: Any) -> Any:
            batch, seq, width = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(width, dim=2)
            heads = (batch, seq, size.n_head, width // size.n_head)
            q, k, v = (t.view(heads).transpose(1, 2) for t in (q, k, v))
            attn = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(attn.transpose(1, 2).reshape(batch, seq, width))
            return x + self.out(functional.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class Gpt(module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Embedding(size.vocab, size.d_model)
            self.positions = nn.Embedding(size.seq_len, size.d_model)
            self.blocks = nn.ModuleList(Block() for _ in range(size.n_layer))
            self.ln = nn.LayerNorm(size.d_model)
            self.head = nn.Linear(size.d_model, size.vocab, bias=False)
            self.head.weight = self.tokens.weight

        def forward(self, idx: Any, targets: Any) -> Any:
            positions = torch.arange(idx.shape[1], device=idx.device)
            x = self.tokens(idx) + self.positions(positions)
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False) if checkpointing else block(x)
            logits = self.head(self.ln(x))
            return functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))

    return Gpt()


def measure_config(
    torch: Any,
    config: StudyConfig,
    size: ModelSize,
    device: str,
    *,
    warmup_steps: int,
    start_sampler: Callable[[float], BackgroundSampler],
    measure_seconds: float,
    min_window_seconds: float,
    deadline: float,
    compile_backend: str = "inductor",
) -> Measurement:
    """Build, warm up and train ``config``; the sampler's window is the measurement.

    The window is ``measure_seconds``, shortened to what is left before
    ``deadline`` (never below ``min_window_seconds``), so an estimate that was
    short costs measurement time rather than the budget.
    """
    started = time.monotonic()
    torch.manual_seed(SEED)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model: Any = None
    optimizer: Any = None
    step_model: Any = None
    sampler: BackgroundSampler | None = None
    try:
        with torch.device(device):  # initialised where it trains: a 1.3B model's CPU init takes seconds
            model = build_model(torch, size, config.activation_checkpointing)
        params = sum(p.numel() for p in model.parameters())
        options = {"fused": True} if config.fused_optimizer else {"foreach": True}
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, **options)
        step_model = torch.compile(model, backend=compile_backend) if config.compiled else model
        generator = torch.Generator(device="cpu").manual_seed(SEED)
        tokens = torch.randint(0, size.vocab, (size.global_batch, size.seq_len + 1), generator=generator)
        tokens = tokens.to(device)
        inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

        def step() -> None:
            for i in range(config.grad_accum):
                rows = slice(i * config.micro_batch, (i + 1) * config.micro_batch)
                with torch.autocast(device_type=device, dtype=torch.bfloat16):
                    loss = step_model(inputs[rows], targets[rows]) / config.grad_accum
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()

        for done in range(warmup_steps):
            step()
            if done and time.monotonic() > deadline:
                break  # past the budget: measure what is warm
        warmup = time.monotonic() - started
        window = max(min(measure_seconds, deadline - time.monotonic() - 1.0), min_window_seconds)
        sampler = start_sampler(window)
        steps = 0
        begin = time.monotonic()
        while steps == 0 or sampler.running():
            step()
            steps += 1
        measured = time.monotonic() - begin
        capture = sampler.result()
    except RuntimeError as exc:  # torch's: out of memory, a compiler that fails; the sweep goes on
        if sampler is not None:
            sampler.result()  # one sampling window at a time: let this one end before the next starts
        status = "oom" if isinstance(exc, torch.cuda.OutOfMemoryError) else "error"
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        elapsed = time.monotonic() - started
        return Measurement(status, math.nan, math.nan, 0, 0.0, elapsed, math.nan, 0, None, reason[:300])
    finally:
        model = optimizer = step_model = None  # free the GPU's memory for the next configuration
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        if config.compiled:
            torch._dynamo.reset()
    peak = float(torch.cuda.max_memory_allocated()) if device == "cuda" else math.nan
    iteration = measured / steps
    tokens_per_second = steps * size.global_batch * size.seq_len / measured
    return Measurement("ok", tokens_per_second, iteration, steps, measured, warmup, peak, params, capture)


# -- the study --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    """What the results row says about the machine."""

    device: str
    gpu_name: str
    driver_version: str
    torch_version: str
    cuda_version: str


def driver_version() -> str:
    """The NVIDIA driver's version from the kernel module, or nvidia-smi; "" where neither answers."""
    proc = Path("/proc/driver/nvidia/version")
    if proc.is_file():
        for word in proc.read_text(errors="replace").split():
            if word.count(".") >= 1 and word.replace(".", "").isdigit():
                return word
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        done = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.splitlines()[0].strip()
    return ""


def _print_now(line: str) -> None:
    print(line, flush=True)  # a run cut off by its time limit still shows how far it got


def run_study(
    sizes: Sequence[ModelSize],
    out: Path,
    *,
    preset: str,
    budget_seconds: float,
    measure_seconds: float,
    interval_seconds: float,
    warmup_steps: int,
    device: str,
    source: NvmlSource,
    torch: Any,
    compile_backend: str = "inductor",
    started: float | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, object]]:
    """Run the sweep within ``budget_seconds`` of ``started`` (``time.monotonic``, default now).

    Returns the rows appended to results.csv, one per configuration that ran.
    """
    clock = time.monotonic
    started = clock() if started is None else started
    log = log or _print_now
    deadline = started + budget_seconds
    by_name = {s.name: s for s in sizes}
    gpus = source.devices()
    env = Environment(
        device,
        gpus[0].name if gpus else "",
        driver_version(),
        str(torch.__version__),
        str(torch.version.cuda or ""),
    )
    out.mkdir(parents=True, exist_ok=True)
    results = out / RESULTS_CSV
    new_file = not results.exists()
    rows: list[dict[str, object]] = []
    seen: dict[tuple[str, bool], float] = {}
    configs = sweep(sizes)
    where = env.gpu_name or device
    log(f"zest GPU study: {len(configs)} configurations, budget {budget_seconds:.0f} s, on {where}")
    with results.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_COLUMNS)
        if new_file:
            writer.writeheader()
            handle.flush()
        for number, config in enumerate(configs, start=1):
            size = by_name[config.size]
            estimate = estimate_seconds(config, sizes, measure_seconds, seen)
            left = deadline - clock()
            if estimate > left:
                need = f"needs ~{estimate:.0f} s, {left:.0f} s left"
                log(f"[{number}/{len(configs)}] skipped {config.name}: {need}")
                continue
            log(f"[{number}/{len(configs)}] {config.name}: ~{estimate:.0f} s")
            begin = clock()
            started_utc = datetime.now(UTC).isoformat(timespec="seconds")

            def start_sampler(window_seconds: float, config: StudyConfig = config) -> BackgroundSampler:
                sampler = BackgroundSampler(source, window_seconds, interval_seconds, config.name)
                sampler.start()
                return sampler

            result = measure_config(
                torch,
                config,
                size,
                device,
                warmup_steps=warmup_steps,
                start_sampler=start_sampler,
                measure_seconds=measure_seconds,
                min_window_seconds=interval_seconds,
                deadline=deadline,
                compile_backend=compile_backend,
            )
            capture_name = ""
            samples = 0
            if result.capture is not None:
                capture_name = f"{config.name}.parquet"
                notes = [
                    f"zest GPU study, configuration {config.name}: {json.dumps(asdict(config))}",
                    f"model {size.name}: {json.dumps(asdict(size))}",
                    f"measured {result.tokens_per_second:.1f} tokens/s, {result.iteration_seconds:.4f} s "
                    f"per optimizer step over {result.steps_measured} steps",
                    *result.capture.notes,
                ]
                write_capture(result.capture.frame, out / capture_name, notes=notes)
                samples = len(result.capture.frame)
            elapsed = clock() - begin
            overhead = max(elapsed - result.measured_seconds - 1.0, 0.0)
            key = (config.size, config.compiled)
            seen[key] = max(seen.get(key, 0.0), overhead)  # the slowest so far: budgets err long
            row: dict[str, object] = {
                "config": config.name,
                "preset": preset,
                "size": size.name,
                "params": result.params,
                "seq_len": size.seq_len,
                "global_batch": size.global_batch,
                "micro_batch": config.micro_batch,
                "grad_accum": config.grad_accum,
                "activation_checkpointing": config.activation_checkpointing,
                "fused_optimizer": config.fused_optimizer,
                "compiled": config.compiled,
                "status": result.status,
                "tokens_per_second": result.tokens_per_second,
                "iteration_seconds": result.iteration_seconds,
                "steps_measured": result.steps_measured,
                "measured_seconds": result.measured_seconds,
                "warmup_seconds": result.warmup_seconds,
                "estimated_seconds": estimate,
                "elapsed_seconds": elapsed,
                "peak_mem_bytes": result.peak_mem_bytes,
                "samples": samples,
                "capture": capture_name,
                "started_utc": started_utc,
                "error": result.error,
                **asdict(env),
            }
            writer.writerow(row)
            handle.flush()
            os.fsync(handle.fileno())
            rows.append(row)
            if result.error:
                log(f"    {result.status}: {result.error}")
            log(
                f"    {result.status}: {result.tokens_per_second:,.0f} tokens/s, "
                f"{result.iteration_seconds:.3f} s/step, {samples} samples, {elapsed:.1f} s"
            )
    log(f"done: {len(rows)} of {len(configs)} configurations in {clock() - started:.0f} s; {results}")
    return rows


def print_plan(sizes: Sequence[ModelSize], measure_seconds: float, budget_seconds: float) -> None:
    """Each configuration with its prior estimate, the running total, and whether it fits the budget."""
    total = 0.0
    for number, config in enumerate(sweep(sizes), start=1):
        estimate = estimate_seconds(config, sizes, measure_seconds, {})
        total += estimate
        fits = "" if total <= budget_seconds else "  (past the budget)"
        print(f"{number:2d}. {config.name:<42} ~{estimate:4.0f} s  total ~{total:4.0f} s{fits}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, help="folder for results.csv and the captures (required)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop within this many seconds (480)")
    parser.add_argument(
        "--measure-s", type=float, default=20.0, help="measurement window per configuration (20)"
    )
    parser.add_argument("--interval-s", type=float, default=1.0, help="NVML sampling interval (1)")
    parser.add_argument("--warmup-steps", type=int, default=3, help="optimizer steps before measuring (3)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="hopper", help="model sizes (hopper)")
    parser.add_argument(
        "--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: cuda if present"
    )
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend (inductor; aot_eager skips codegen)",
    )
    parser.add_argument(
        "--plan", action="store_true", help="print the configurations and their estimated times, run nothing"
    )
    args = parser.parse_args(argv)
    if not args.budget_s > 0 or not args.measure_s > 0 or not args.interval_s > 0:
        parser.error("--budget-s, --measure-s and --interval-s must be > 0")
    if args.interval_s > args.measure_s:
        parser.error("--interval-s must not be longer than --measure-s")
    if args.out is None and not args.plan:
        parser.error("--out is required")
    if args.warmup_steps < 1:
        parser.error("--warmup-steps must be >= 1")
    return args


def main(argv: Sequence[str] | None = None, nvml: NvmlModule | None = None) -> int:
    """Run the study; ``nvml`` replaces the real driver (tests pass the fake one)."""
    started = time.monotonic()
    args = parse_args(argv)
    if args.plan:
        print_plan(PRESETS[args.preset], args.measure_s, args.budget_s)
        return 0
    import torch  # heavy: after the arguments are known good

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in fp32
    source = NvmlSource(nvml=nvml)
    try:
        run_study(
            PRESETS[args.preset],
            args.out,
            preset=args.preset,
            budget_seconds=args.budget_s,
            measure_seconds=args.measure_s,
            interval_seconds=args.interval_s,
            warmup_steps=args.warmup_steps,
            device=device,
            source=source,
            torch=torch,
            compile_backend=args.compile_backend,
            started=started,
        )
    except SourceUnavailable as exc:
        print(
            f"gpu_study: {exc} (the study samples this machine's GPU: run it where a driver is)",
            file=sys.stderr,
        )
        return 2
    finally:
        source.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

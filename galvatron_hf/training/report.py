"""Predicted vs measured: step time and peak memory per pipeline stage, printed when training ends.

Rank 0 also writes, into ``output_dir``: ``plan.json`` and ``plan.html`` (the plan report of
``galvatron-hf search --report``) when training begins, so the plan a run used is kept with its checkpoints;
and when it ends ``plan_report.json`` (predicted vs measured, per stage) and ``plan.html`` again, with the
measured step time and peak memory drawn over the prediction.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from galvatron_hf.jsonfile import write_json_atomic
from galvatron_hf.planner.plan import Plan
from galvatron_hf.planner.request import ResolvedPlan
from galvatron_hf.report.plan_data import Measured

PLAN_FILE, PLAN_HTML, RUN_REPORT_FILE = "plan.json", "plan.html", "plan_report.json"
RUN_REPORT_VERSION = 1

WARMUP_STEPS = 1  # the first step builds caches, allocators and communicators: not a steady-state time


@dataclass
class StepClock:
    """Wall time of each optimizer step (forward, backward, clipping, optimizer), warm-up steps excluded."""

    times_s: list[float] = field(default_factory=list)
    seen: int = 0
    _started: float | None = None

    def start(self) -> None:
        _synchronize()
        self._started = time.perf_counter()

    def stop(self) -> None:
        if self._started is None:
            return
        _synchronize()
        self.seen += 1
        if self.seen > WARMUP_STEPS:
            self.times_s.append(time.perf_counter() - self._started)
        self._started = None

    @property
    def mean_s(self) -> float | None:
        return sum(self.times_s) / len(self.times_s) if self.times_s else None


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def peak_memory_gb() -> tuple[float, str]:
    """Peak allocated device memory (CUDA), else the process's peak resident set size (CPU runs)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 1e9, "CUDA max allocated"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024 / 1e9, "process peak RSS"


class PlanReportCallback(TrainerCallback):
    """Times optimizer steps, prints predicted vs measured step time and peak memory at the end, and keeps
    the plan and its report in ``output_dir`` (see the module docstring)."""

    def __init__(self, resolved: ResolvedPlan, stage: int, compile_clock=None) -> None:
        self.resolved = resolved
        self.plan = resolved.plan
        self.stage = stage
        self.compile_clock = compile_clock  # parallel.compile.CompileClock when the blocks are compiled
        self.clock = StepClock()
        self.summary: str | None = None
        self.measured: Measured | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if args.should_save:
            written = write_plan_files(Path(args.output_dir), self.resolved)
            print(f"galvatron: the plan is in {', '.join(str(path) for path in written)}", flush=True)

    def on_step_begin(self, args, state, control, **kwargs):
        self.clock.start()

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.stop()

    def on_train_end(self, args, state, control, **kwargs):
        memory, what = peak_memory_gb()
        per_rank = [(self.stage, memory, self.clock.mean_s)]
        if dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, per_rank[0])
            per_rank = gathered
        self.measured = measured_of(self.plan, per_rank, what, len(self.clock.times_s))
        self.summary = format_report(self.plan, self.measured)
        if self.compile_clock is not None:
            self.summary += f"\n  {self.compile_clock.describe()} (this rank; the first step's time, not counted above)"
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(self.summary, flush=True)
            sys.stdout.flush()
        if args.should_save:
            write_plan_files(Path(args.output_dir), self.resolved, self.measured)


def measured_of(plan: Plan, per_rank: list[tuple[int, float, float | None]], memory_kind: str, steps: int) -> Measured:
    """The slowest rank's mean step (every rank waits for it) and each stage's largest peak."""
    times = [t for _, _, t in per_rank if t is not None]
    peaks = tuple(max((m for s, m, _ in per_rank if s == stage), default=0.0) for stage in range(plan.pp))
    return Measured(max(times) if times else None, peaks, memory_kind, steps)


def write_plan_files(directory: Path, resolved: ResolvedPlan, measured: Measured | None = None) -> list[Path]:
    """``plan.json`` and ``plan.html``, and with ``measured`` also ``plan_report.json``; the paths written.

    The HTML needs the cost model's per-stage report; a plan file whose own prediction was kept has none,
    and then only the JSON files are written (the summary printed at start says where the prediction is from).
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = [resolved.plan.save(directory / PLAN_FILE)]
    if measured is not None:
        text = json.dumps(run_report(resolved.plan, measured), indent=2)
        written.append(write_json_atomic(directory / RUN_REPORT_FILE, text))
    if resolved.report is not None:
        from galvatron_hf.report import gather_plan_report, write_plan_html

        report = gather_plan_report(
            resolved.spec, resolved.hardware, resolved.plan, resolved.report, resolved.memory_gb, resolved.search
        )
        written.append(write_plan_html(directory / PLAN_HTML, replace(report, measured=measured)))
    return written


def run_report(plan: Plan, measured: Measured) -> dict:
    """``plan_report.json``: the prediction and what the run measured, per pipeline stage."""
    predicted = plan.predicted
    return {
        "version": RUN_REPORT_VERSION,
        "predicted": {
            "step_time_s": predicted.step_time_s if predicted else None,
            "peak_memory_gb": list(predicted.peak_memory_gb) if predicted else None,
        },
        "measured": asdict(measured),
    }


def format_report(plan: Plan, measured: Measured) -> str:
    lines = ["galvatron: predicted vs measured"]
    predicted = plan.predicted
    step_pred = f"{predicted.step_time_s * 1e3:.3g} ms" if predicted else "n/a"
    step = measured.step_time_s
    step_meas = f"{step * 1e3:.1f} ms" if step is not None else "n/a (too few steps)"
    lines.append(f"  step time: predicted {step_pred}, measured {step_meas} (mean after {WARMUP_STEPS} warm-up step)")
    for stage, peak in enumerate(measured.peak_memory_gb):
        pred = f"{predicted.peak_memory_gb[stage]:.2f} GB" if predicted else "n/a"
        lines.append(
            f"  stage {stage} peak memory: predicted {pred}, measured {peak:.2f} GB ({measured.memory_kind})"
        )
    return "\n".join(lines)

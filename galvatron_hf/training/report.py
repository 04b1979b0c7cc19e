"""Predicted vs measured: step time and peak memory per pipeline stage, printed when training ends."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from galvatron_hf.planner.plan import Plan

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
    """Times optimizer steps and prints predicted vs measured step time and peak memory at the end."""

    def __init__(self, plan: Plan, stage: int, compile_clock=None) -> None:
        self.plan = plan
        self.stage = stage
        self.compile_clock = compile_clock  # parallel.compile.CompileClock when the blocks are compiled
        self.clock = StepClock()
        self.summary: str | None = None

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
        self.summary = format_report(self.plan, per_rank, what)
        if self.compile_clock is not None:
            self.summary += f"\n  {self.compile_clock.describe()} (this rank; the first step's time, not counted above)"
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(self.summary, flush=True)
            sys.stdout.flush()


def format_report(plan: Plan, per_rank: list[tuple[int, float, float | None]], memory_kind: str) -> str:
    times = [t for _, _, t in per_rank if t is not None]
    measured_step = max(times) if times else None
    lines = ["galvatron: predicted vs measured"]
    predicted = plan.predicted
    step_pred = f"{predicted.step_time_s * 1e3:.3g} ms" if predicted else "n/a"
    step_meas = f"{measured_step * 1e3:.1f} ms" if measured_step is not None else "n/a (too few steps)"
    lines.append(f"  step time: predicted {step_pred}, measured {step_meas} (mean after {WARMUP_STEPS} warm-up step)")
    for stage in range(plan.pp):
        peak = max((m for s, m, _ in per_rank if s == stage), default=0.0)
        pred = f"{predicted.peak_memory_gb[stage]:.2f} GB" if predicted else "n/a"
        lines.append(f"  stage {stage} peak memory: predicted {pred}, measured {peak:.2f} GB ({memory_kind})")
    return "\n".join(lines)

"""Timing helpers shared by the hardware and model profilers: device-accurate timers, warm-up, median.

On CUDA a timer records events on the current stream (host time would include launch queueing and miss
asynchronous work); on CPU it reads ``time.perf_counter``. Both report seconds.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


class DeviceTimer:
    """Measures one region of device work: ``start()``, run the work, ``stop()`` returns seconds."""

    def __init__(self, device: torch.device, stream: torch.cuda.Stream | None = None) -> None:
        self.cuda = device.type == "cuda"
        self.stream = stream
        self._start_event = self._end_event = None
        self._start_time = 0.0

    def start(self) -> None:
        if self.cuda:
            self._start_event = torch.cuda.Event(enable_timing=True)
            self._end_event = torch.cuda.Event(enable_timing=True)
            self._start_event.record(self.stream)
        else:
            self._start_time = time.perf_counter()

    def stop(self) -> float:
        """Seconds since ``start``; on CUDA this waits for the recorded work to finish."""
        if self.cuda:
            self._end_event.record(self.stream)
            self._end_event.synchronize()
            return self._start_event.elapsed_time(self._end_event) / 1e3
        return time.perf_counter() - self._start_time


class QueueAhead:
    """Times device work the way training runs it: with the host already ahead of the GPU.

    In a training step the host enqueues kernels while the GPU is still busy with earlier ones, so a
    layer costs its GPU time. Timed alone and synchronised, a small layer instead costs the host's launch
    time (tens of microseconds per kernel): micro-batch 2 can then look faster than micro-batch 1, and a
    fit through such points gets a large intercept and too small a slope. Before each timed region this
    keeps the GPU busy (``torch.cuda._sleep``) for longer than the host needs to enqueue the region, so the
    start event fires only when the whole region is queued. The host's enqueue time is learned per region
    name from the previous run. On CPU it does nothing.
    """

    MARGIN = 1.5  # sleep this multiple of the host's enqueue time ...
    MINIMUM_S = 1e-3  # ... and at least this long

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.device = device
        self.enabled = enabled and device.type == "cuda" and hasattr(torch.cuda, "_sleep")
        self._host_s: dict[str, float] = {}
        self._cycles_per_s: float | None = None

    def before(self, region: str) -> float:
        """Queue the GPU sleep for ``region``; returns the host clock to pass to :meth:`after`."""
        if self.enabled:
            seconds = max(self.MINIMUM_S, self.MARGIN * self._host_s.get(region, 0.02))
            torch.cuda._sleep(int(seconds * self.cycles_per_s()))
        return time.perf_counter()

    def after(self, region: str, host_start: float) -> None:
        """Record how long the host took to enqueue ``region`` (call before synchronising)."""
        self._host_s[region] = time.perf_counter() - host_start

    def cycles_per_s(self) -> float:
        """GPU clock cycles per second of ``torch.cuda._sleep``, measured once with events."""
        if self._cycles_per_s is None:
            cycles = 10_000_000
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(cycles // 10)  # warm-up
            start.record()
            torch.cuda._sleep(cycles)
            end.record()
            end.synchronize()
            self._cycles_per_s = cycles / (start.elapsed_time(end) / 1e3)
        return self._cycles_per_s


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Repeats:
    """How often to run a measurement: ``warmup`` discarded runs, then the median of ``repeats``."""

    warmup: int = 3
    repeats: int = 10


def median_time(run_once: Callable[[], float], repeats: Repeats) -> float:
    """Median of ``repeats`` calls of ``run_once`` (each returns the seconds it measured) after warm-up."""
    for _ in range(repeats.warmup):
        run_once()
    return statistics.median(run_once() for _ in range(max(repeats.repeats, 1)))


def time_region(device: torch.device, work: Callable[[], object], repeats: Repeats) -> float:
    """Median seconds of ``work()`` on ``device``, synchronising before each run so runs do not overlap."""

    def run_once() -> float:
        synchronize(device)
        timer = DeviceTimer(device)
        timer.start()
        work()
        return timer.stop()

    return median_time(run_once, repeats)


class Progress:
    """A progress bar on stderr (tqdm, as the HF libraries show long work), on rank 0 only.

    Each finished step's result (a fitted bandwidth, a layer's time) is written as a line above the bar, so
    a log that is not a terminal keeps every measurement; the bar closes when the last step is done.
    """

    def __init__(self, prefix: str, total: int, enabled: bool = True) -> None:
        self.prefix = prefix
        self.enabled = enabled
        self.bar = tqdm(total=total, desc=prefix, unit="step", file=sys.stderr, disable=not enabled, dynamic_ncols=True)

    @property
    def done(self) -> int:
        return self.bar.n

    def step(self, message: str) -> None:
        if self.enabled:
            self.bar.write(f"{self.prefix}: {message}", file=sys.stderr)
        self.bar.update(1)
        if self.bar.total is not None and self.bar.n >= self.bar.total:
            self.bar.close()

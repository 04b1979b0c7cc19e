"""Least-squares fits the profiles store: ``latency + bytes / bandwidth`` and time against tokens.

Pure numpy, so the fits can be checked without torch. Both fits weight each point by ``1 / time``
(relative error): a sweep spans several decades of message size, and an unweighted fit would let the
largest message decide everything and return a meaningless (even negative) latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from galvatron_hf.profiler.model_schema import TokenFit


class FitError(ValueError):
    """Measurements that cannot give a fit (too few points, non-positive times)."""


@dataclass(frozen=True)
class LinearFit:
    """``time_s = latency_s + nbytes / bandwidth_Bps``, with the worst relative residual of the fit."""

    latency_s: float
    bandwidth_Bps: float
    max_relative_error: float


def fit_latency_bandwidth(nbytes: Sequence[float], times_s: Sequence[float]) -> LinearFit:
    """Fit latency and bandwidth to a message-size sweep.

    When noise makes the slope non-positive (tiny sizes all within timer jitter) the bandwidth falls back
    to the largest message's effective rate and the latency to the smallest time: still positive, still an
    upper bound on the real time, never a division by zero in the planner.
    """
    x = np.asarray(nbytes, dtype=float)
    t = np.asarray(times_s, dtype=float)
    if x.size < 2 or x.size != t.size:
        raise FitError(f"need at least two (size, time) points of equal count, got {x.size} and {t.size}")
    if np.any(t <= 0):
        raise FitError("times must be positive")
    weights = 1.0 / t
    design = np.stack([np.ones_like(x), x], axis=1) * weights[:, None]
    (latency, per_byte), *_ = np.linalg.lstsq(design, t * weights, rcond=None)
    if per_byte <= 0:
        largest = int(np.argmax(x))
        per_byte = t[largest] / x[largest]
        smallest = int(np.argmin(x))
        latency = t[smallest] - per_byte * x[smallest]
    latency = max(float(latency), 0.0)
    predicted = latency + per_byte * x
    max_error = float(np.max(np.abs(predicted - t) / t))
    return LinearFit(latency_s=latency, bandwidth_Bps=float(1.0 / per_byte), max_relative_error=max_error)


def fit_tokens(
    micro_batch_sizes: Sequence[float],
    seq_lens: Sequence[float],
    kv_seq_lens: Sequence[float],
    times_s: Sequence[float],
    attention: bool,
) -> TokenFit:
    """Fit a :class:`TokenFit` with non-negative coefficients.

    Terms whose coefficient comes out negative (noise, or an attention term the sweep cannot separate from
    the token term) are dropped one at a time and the rest refitted, so predictions never decrease with size.
    """
    b = np.asarray(micro_batch_sizes, dtype=float)
    s = np.asarray(seq_lens, dtype=float)
    kv = np.asarray(kv_seq_lens, dtype=float)
    t = np.asarray(times_s, dtype=float)
    if t.size == 0 or np.any(t <= 0):
        raise FitError("need at least one point and positive times")
    columns = {"intercept": np.ones_like(t), "token": b * s}
    if attention and np.unique(s * kv).size > 1:
        columns["attention"] = b * s * kv
    active = list(columns)
    while True:
        coefficients = _weighted_lstsq([columns[name] for name in active], t)
        negative = [name for name, value in zip(active, coefficients) if value < 0]
        if not negative or len(active) == 1:
            break
        active.remove("intercept" if "intercept" in negative else negative[-1])
    values = dict.fromkeys(columns, 0.0)
    values.update({name: max(float(c), 0.0) for name, c in zip(active, coefficients)})
    fit = TokenFit(values["intercept"], values["token"], values.get("attention", 0.0))
    predicted = np.array([fit.time_s(bi, si, ki) for bi, si, ki in zip(b, s, kv)])
    return TokenFit(fit.intercept_s, fit.per_token_s, fit.per_attention_s, float(np.max(np.abs(predicted - t) / t)))


def _weighted_lstsq(columns: list[np.ndarray], t: np.ndarray) -> np.ndarray:
    weights = 1.0 / t
    design = np.stack(columns, axis=1) * weights[:, None]
    solution, *_ = np.linalg.lstsq(design, t * weights, rcond=None)
    return solution

"""The truth report: measured layer costs next to the analytic figures the planner uses by default.

Printed by `galvatron-hf profile model` so the analytic model can be corrected where it is off. Per layer
kind, at the profile's sequence length and the largest profiled micro-batch:

* forward / backward time: measured fit vs the planner's analytic compute cost (FLOPs / (matmul rate x layer efficiency), as AnalyticCompute);
* activation bytes per sample (no checkpointing, and checkpointed): measured saved tensors vs the adapter's
  ``ActivationModel``;
* parameter bytes: measured vs ``LayerSpec.params`` x dtype size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from galvatron_hf.adapters.spec import LayerSpec, ModelSpec
from galvatron_hf.profiler.model_schema import ModelProfile

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

# (layer, micro_batch_size) -> (forward seconds, backward seconds): the analytic side of the comparison
AnalyticTimes = Callable[[LayerSpec, int], tuple[float, float]]


@dataclass(frozen=True)
class TruthRow:
    kind: str
    figure: str  # "forward time", "backward time", "activation/sample", ...
    unit: str  # "ms", "MiB" or "%"
    measured: float
    analytic: float | None

    @property
    def ratio(self) -> float | None:
        """measured / analytic: > 1 means the analytic model is optimistic."""
        if self.analytic is None or self.analytic == 0:
            return None
        return self.measured / self.analytic


def truth_rows(profile: ModelProfile, spec: ModelSpec, analytic_times: AnalyticTimes | None) -> list[TruthRow]:
    """Rows for every profiled layer kind. ``analytic_times`` None leaves the analytic time cells empty."""
    micro_batch = max(profile.micro_batch_sizes)
    dtype_bytes = DTYPE_BYTES[profile.key.dtype]
    rows: list[TruthRow] = []
    for kind, measured in profile.layers.items():
        layer = next((l for l in spec.layers if l.kind == kind), None)
        if layer is None:
            continue
        forward, backward = analytic_times(layer, micro_batch) if analytic_times else (None, None)
        attn = profile.key.attn_implementation
        attn = attn if attn in ("eager", "sdpa", "flash_attention_2") else "sdpa"
        mib = 2**20
        rows.append(
            TruthRow(
                kind,
                f"forward time (mbs {micro_batch})",
                "ms",
                measured.forward_time_s(micro_batch) * 1e3,
                _scaled(forward, 1e3),
            )
        )
        rows.append(
            TruthRow(
                kind,
                f"backward time (mbs {micro_batch})",
                "ms",
                measured.backward_time_s(micro_batch) * 1e3,
                _scaled(backward, 1e3),
            )
        )
        worst_fit = max(measured.forward.max_relative_error, measured.backward.max_relative_error)
        rows.append(TruthRow(kind, "time fit: worst point error", "%", worst_fit * 100, None))
        if layer.is_block:  # the planner checkpoints blocks only; recomputing is one more forward
            rows.append(
                TruthRow(
                    kind, "recompute time", "ms", measured.recompute_time_s(micro_batch) * 1e3, _scaled(forward, 1e3)
                )
            )
        rows.append(
            TruthRow(
                kind,
                "activation/sample",
                "MiB",
                measured.activation_bytes_per_sample / mib,
                layer.activation_bytes(1, dtype_bytes, False, attn) / mib,  # type: ignore[arg-type]
            )
        )
        if layer.is_block:
            rows.append(
                TruthRow(
                    kind,
                    "checkpointed/sample",
                    "MiB",
                    measured.checkpointed_bytes_per_sample / mib,
                    layer.activation_bytes(1, dtype_bytes, True, attn) / mib,  # type: ignore[arg-type]
                )
            )
        rows.append(TruthRow(kind, "parameters", "MiB", measured.param_bytes / mib, layer.params * dtype_bytes / mib))
        if measured.backward_peak_bytes_per_sample is not None:
            rows.append(
                TruthRow(kind, "backward peak/sample", "MiB", measured.backward_peak_bytes_per_sample / 2**20, None)
            )
        if layer.is_block and measured.checkpointed_backward_peak_bytes_per_sample is not None:
            rows.append(
                TruthRow(
                    kind,
                    "checkpointed bwd peak/sample",
                    "MiB",
                    measured.checkpointed_backward_peak_bytes_per_sample / 2**20,
                    None,
                )
            )
    return rows


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def format_truth_report(rows: list[TruthRow], analytic_source: str = "") -> str:
    header = f"{'layer':<20} {'figure':<32} {'measured':>11} {'analytic':>11} {'meas/anal':>10}"
    lines = ["measured vs analytic (planner default)" + (f" [{analytic_source}]" if analytic_source else ""), header]
    for row in rows:
        analytic = "-" if row.analytic is None else f"{row.analytic:.4g}"
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
        figure = f"{row.figure} [{row.unit}]"
        lines.append(f"{row.kind:<20} {figure:<32} {row.measured:>11.4g} {analytic:>11} {ratio:>10}")
    return "\n".join(lines)

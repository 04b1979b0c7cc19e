"""Layer compute costs from a measured model profile: the planner's :class:`LayerCostSource`, profiled.

`galvatron-hf profile model` measures one layer of each kind on one device at TP 1 over a sweep of
micro-batch sizes and sequence lengths (``profiler/model_schema.py``). This source answers the cost model's
questions from those measurements:

* time: the profile's fit ``intercept + per_token * b * s + per_attention * b * s * kv`` at the layer's own
  lengths and the rank's samples, divided by the TP degree (the cost model passes tp > 1 only for layers
  with TP-split parameters; the same division the analytic model makes);
* activation bytes: the measured bytes per sample, carried to another TP degree, sequence length or
  checkpointing choice by the ratio the adapter's ``ActivationModel`` gives between the two settings
  (measured x analytic(asked) / analytic(measured setting)), so what was measured stays the anchor.

Layer kinds the profile lacks fall back to the analytic source, and :meth:`ProfiledCompute.figure_sources`
says which figure came from where. :func:`profile_warnings` lists every way a profile does not match the
model, dtype, attention kernel or device it is used for. Pure Python: no torch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from galvatron_hf.planner.cost_model import AnalyticCompute, LayerCostSource, Precision
from galvatron_hf.profiler.model_schema import LayerProfile, ModelProfile, ModelProfileError, config_hash

if TYPE_CHECKING:
    from galvatron_hf.adapters.spec import LayerSpec, ModelSpec
    from galvatron_hf.profiler.hardware_schema import HardwareProfile


class ProfileMismatchWarning(UserWarning):
    """A model profile used for a model, dtype, kernel or device other than the one it measured."""


@dataclass(frozen=True)
class ProfiledCompute:
    """:class:`LayerCostSource` backed by a :class:`ModelProfile`; ``fallback`` answers unprofiled kinds."""

    profile: ModelProfile
    fallback: LayerCostSource
    mixed_precision: str = "bf16"
    attn_impl: str = "sdpa"
    profile_path: str = ""
    source: str = "profiled"
    missing_kinds: frozenset[str] = field(default_factory=frozenset)

    # ----- the LayerCostSource protocol ------------------------------------------------------------------
    def forward_time_s(self, layer: LayerSpec, samples: float, tp: int) -> float:
        measured = self._measured(layer)
        if measured is None:
            return self.fallback.forward_time_s(layer, samples, tp)
        return measured.forward.time_s(samples, layer.seq_len, _kv_len(layer)) / tp

    def backward_time_s(self, layer: LayerSpec, samples: float, tp: int) -> float:
        measured = self._measured(layer)
        if measured is None:
            return self.fallback.backward_time_s(layer, samples, tp)
        return measured.backward.time_s(samples, layer.seq_len, _kv_len(layer)) / tp

    def activation_bytes(self, layer: LayerSpec, samples: float, tp: int, checkpoint: bool) -> float:
        measured = self._measured(layer)
        if measured is None:
            return self.fallback.activation_bytes(layer, samples, tp, checkpoint)
        per_sample = measured.checkpointed_bytes_per_sample if checkpoint else measured.activation_bytes_per_sample
        return samples * per_sample * self._analytic_ratio(layer, measured, tp, checkpoint)

    # ----- helpers ---------------------------------------------------------------------------------------
    def _measured(self, layer: LayerSpec) -> LayerProfile | None:
        return self.profile.layers.get(layer.kind)

    def _analytic_ratio(self, layer: LayerSpec, measured: LayerProfile, tp: int, checkpoint: bool) -> float:
        """analytic(asked) / analytic(as measured: TP 1, the profiled lengths); 1 when analytic says 0."""
        dtype_bytes = Precision.of(self.mixed_precision).compute_bytes
        attn = self.attn_impl  # type: ignore[assignment]
        at_profile = replace(layer, seq_len=measured.seq_len, kv_seq_len=measured.kv_seq_len if layer.kv_seq_len else 0)
        base = at_profile.activation_bytes(1, dtype_bytes, checkpoint, attn)
        if base <= 0:
            return 1.0
        return layer.activation_bytes(tp, dtype_bytes, checkpoint, attn) / base

    def figure_sources(self) -> dict[str, str]:
        """Which figure comes from where, for the search report and ``Predicted.source``."""
        where = self.profile_path or self.profile.model_name
        key = self.profile.key
        kernels = f", kernels {key.kernels}" if key.kernels else ""
        measured = f"profiled: {where} ({key.device}, {key.dtype}, {key.attn_implementation}{kernels})"
        sources = {
            "compute time": measured,
            "activation memory": measured + ", scaled to other TP degrees by the adapter's activation model",
        }
        if self.missing_kinds:
            sources["compute time"] += f"; analytic for {', '.join(sorted(self.missing_kinds))} (not profiled)"
        return sources


def _kv_len(layer: LayerSpec) -> int:
    return layer.kv_seq_len or layer.seq_len


def profile_warnings(
    profile: ModelProfile,
    spec: ModelSpec,
    mixed_precision: str,
    attn_impl: str,
    hardware: HardwareProfile | None = None,
    kernels: str | None = None,
) -> list[str]:
    """Every way ``profile`` does not describe this model on this device; empty when it matches. ``kernels``
    (the run's kernel label, e.g. "liger+compile"; None: unknown) is checked against what the profile ran."""
    problems = []
    key = profile.key
    if spec.config and key.config_hash != config_hash(spec.config):
        problems.append(f"it was measured on a different config ({profile.model_name}, {key.model_type})")
    elif key.model_type != spec.model_type:
        problems.append(f"it measured model type {key.model_type!r}, the model is {spec.model_type!r}")
    if key.dtype != mixed_precision:
        problems.append(f"it measured {key.dtype}, the plan uses {mixed_precision}")
    if key.attn_implementation != attn_impl:
        problems.append(f"it measured attention {key.attn_implementation!r}, the plan uses {attn_impl!r}")
    if kernels is not None and key.kernels != kernels:
        problems.append(
            f"it timed layers with kernels {key.kernels or 'none'!r}, this run uses {kernels or 'none'!r}: profile "
            "again with the run's --use_liger_kernel / --torch_compile"
        )
    if hardware is not None and not _same_device(key.device, hardware.device.name):
        problems.append(f"it was measured on {key.device!r}, the hardware profile is {hardware.device.name!r}")
    if spec.seq_len > max(profile.seq_lens, default=0):
        problems.append(
            f"it measured up to seq_len {max(profile.seq_lens)}, the model uses {spec.seq_len} (extrapolated)"
        )
    missing = sorted({layer.kind for layer in spec.layers} - set(profile.layers))
    if missing:
        problems.append(f"it has no {', '.join(missing)} layer (analytic costs used for those)")
    return problems


def _same_device(profiled: str, hardware: str) -> bool:
    """Loose match: built-in names carry extras ("NVIDIA H100 80GB HBM3 (SXM5)" vs torch's name)."""
    a, b = profiled.lower(), hardware.lower()
    if a.startswith("cpu") or b.startswith("cpu"):
        return a.startswith("cpu") and b.startswith("cpu")
    return a in b or b in a or a.split("(")[0].strip() == b.split("(")[0].strip()


def profiled_compute(
    profile: ModelProfile | str | Path,
    spec: ModelSpec,
    hardware: HardwareProfile,
    mixed_precision: str = "bf16",
    attn_impl: str = "sdpa",
    warn: bool = True,
) -> ProfiledCompute:
    """A :class:`ProfiledCompute` for this model and cluster, warning (once per problem) about mismatches."""
    path = ""
    if not isinstance(profile, ModelProfile):
        path = str(profile)
        profile = ModelProfile.load(profile)
    if warn:
        for problem in profile_warnings(profile, spec, mixed_precision, attn_impl, hardware):
            warnings.warn(
                f"model profile {path or profile.model_name}: {problem}", ProfileMismatchWarning, stacklevel=2
            )
    return ProfiledCompute(
        profile=profile,
        fallback=AnalyticCompute(hardware, mixed_precision, attn_impl),
        mixed_precision=mixed_precision,
        attn_impl=attn_impl,
        profile_path=path,
        missing_kinds=frozenset({layer.kind for layer in spec.layers} - set(profile.layers)),
    )


def profiled_source_for(
    profile_path: str | Path | None,
    spec: ModelSpec,
    hardware: HardwareProfile,
    mixed_precision: str = "bf16",
    attn_impl: str = "sdpa",
    kernels: str | None = None,
) -> tuple[LayerCostSource | None, list[str]]:
    """What `galvatron-hf search --profile` and ``auto_parallel=True`` call.

    Returns the compute source to hand to ``search_plan`` / ``estimate_plan`` (None without a profile: the
    analytic default) and lines to show the user: where each figure comes from, then every mismatch
    between the profile and this model, dtype, attention kernel and device.
    """
    lines = [f"communication, memory: hardware profile {hardware.name!r}"]
    if "collectives" in hardware.sources:
        lines[0] += f" (collectives: {hardware.sources['collectives']})"
    if profile_path is None:
        lines.append(
            "compute time, activation memory: analytic (FLOPs / matmul rate; pass --profile to use measurements)"
        )
        return None, lines
    profile = ModelProfile.load(profile_path)
    refuse_foreign_profile(profile, spec, profile_path)
    compute = profiled_compute(profile, spec, hardware, mixed_precision, attn_impl, warn=False)
    compute = replace(compute, profile_path=str(profile_path))
    lines += [f"{figure}: {where}" for figure, where in compute.figure_sources().items()]
    lines += [
        f"warning: model profile {profile_path}: {problem}"
        for problem in profile_warnings(profile, spec, mixed_precision, attn_impl, hardware, kernels)
    ]
    return compute, lines


def refuse_foreign_profile(profile: ModelProfile, spec: ModelSpec, profile_path: str | Path) -> None:
    """A profile of another model (another config or model type) prices nothing of this one: refuse it."""
    key = profile.key
    same_model = key.config_hash == config_hash(spec.config) if spec.config else key.model_type == spec.model_type
    if not same_model:
        raise ModelProfileError(
            f"model profile {profile_path} measured {profile.model_name} ({key.model_type}), not {spec.name} "
            f"({spec.model_type}); profile this model with `galvatron-hf profile model --model_name_or_path "
            f"{spec.name} --output FILE`, or drop --profile for analytic costs"
        )

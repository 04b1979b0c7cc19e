"""Fused kernels applied to the HF model before any sharding: Liger's, and the chunked causal-LM loss.

Liger (``pip install galvatron-hf[kernels]``) replaces, per model family, the RMSNorm, the rotary embedding,
the SwiGLU / GeGLU MLP and the head + cross-entropy (fused linear cross-entropy: the logits are never
materialised) with Triton kernels. It patches the HF modules in place (their forwards, not their parameters),
so tensor parallelism, activation checkpointing, compilation and FSDP2 then apply to the patched model as to
the plain one. What cannot apply is refused or stated, never dropped silently:

- no CUDA device, Liger not installed, or a model type Liger has no kernels for: refused (``KernelError``);
- the fused head + loss needs the whole head weight inside the model's own forward, so it is left out (and
  said so) with a vocabulary-parallel head (vocab tp > 1), with pipeline parallelism (the last stage computes
  the loss from its logits), and for heads other than a causal LM's; the other kernels still apply.

``chunked_loss`` (any device) is ``chunked_loss.py``: the same head without materialised logits, in plain
PyTorch; Liger's fused head wins when both are asked for and it applies.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from galvatron_hf.adapters.spec import ActivationModel, ModelSpec
from galvatron_hf.parallel.chunked_loss import fused_head_obstacle, install_chunked_loss
from galvatron_hf.planner.plan import Plan

logger = logging.getLogger(__name__)

FUSED_HEAD = "fused_linear_cross_entropy"


class KernelError(ValueError):
    """A requested kernel cannot run here; the message names the fix."""


@dataclass(frozen=True)
class KernelConfig:
    """Which fused kernels to apply (``TrainingArguments.use_liger_kernel`` / ``liger_kernel_config``)."""

    liger: bool = False
    liger_options: dict[str, Any] = field(default_factory=dict)  # Liger's switches: rope, rms_norm, swiglu, ...
    chunked_loss: bool = False

    @classmethod
    def from_training_args(cls, args) -> KernelConfig | None:
        if not getattr(args, "use_liger_kernel", False):
            return None
        return cls(liger=True, liger_options=dict(getattr(args, "liger_kernel_config", None) or {}))


    def fuses_head(self, spec: ModelSpec, vocab_tp: int = 1, pp: int = 1) -> bool:
        """Whether the training loss will run without materialised logits under such a plan."""
        liger_head = self.liger and self.liger_options.get(FUSED_HEAD, True)
        return bool(liger_head or self.chunked_loss) and fused_head_obstacle(spec, vocab_tp, pp) is None


def priced_for_kernels(spec: ModelSpec, config: KernelConfig | None, world_size: int) -> ModelSpec:
    """``spec`` with the head's memory as the kernels leave it, for the planner.

    A fused (or chunked) head keeps per token its input and the input's gradient (Liger computes it in
    forward), not the fp32 logits: for a 32k vocabulary and h = 2048 that is 8 kB instead of 132 kB a token.
    Priced on one process only, where the plan's head is whole (vocab tp = pp = 1) so the head surely fuses;
    with more processes the search may choose a vocabulary-parallel head that keeps its logits, and the
    materialised price (never an under-estimate) stays.
    """
    if config is None or world_size != 1 or not config.fuses_head(spec):
        return spec
    layers = tuple(
        dataclasses.replace(layer, activation=ActivationModel(replicated=2 * layer.hidden_size, index_replicated=1))
        if layer.kind == "head"
        else layer
        for layer in spec.layers
    )
    return dataclasses.replace(spec, layers=layers)


@dataclass(frozen=True)
class AppliedKernels:
    """What ``apply_kernels`` did: the kernels in place, and each one left out with its reason."""

    applied: tuple[str, ...] = ()
    left_out: tuple[tuple[str, str], ...] = ()

    @property
    def fused_head(self) -> bool:
        """Whether the training loss runs without materialised logits."""
        return FUSED_HEAD in self.applied or "chunked_loss" in self.applied

    def describe(self) -> list[str]:
        lines = [f"fused kernels: {', '.join(self.applied)}"] if self.applied else []
        return lines + [f"not applied: {name}: {reason}" for name, reason in self.left_out]


def apply_kernels(
    model: nn.Module, spec: ModelSpec, plan: Plan, device: torch.device, config: KernelConfig | None
) -> AppliedKernels:
    """Patch ``model`` (the whole HF model, before pruning or sharding) with the kernels ``config`` asks for."""
    if config is None:
        return AppliedKernels()
    result = AppliedKernels()
    if config.liger:
        result = _apply_liger(model, spec, plan, device, config.liger_options)
    if config.chunked_loss and FUSED_HEAD not in result.applied:
        install_chunked_loss(model, spec, vocab_tp=plan.vocab.tp, pp=plan.pp)
        result = AppliedKernels(result.applied + ("chunked_loss",), result.left_out)
    for line in result.describe():
        (logger.warning if line.startswith("not applied") else logger.info)("galvatron: %s", line)
    return result


def _apply_liger(model, spec: ModelSpec, plan: Plan, device: torch.device, options: dict[str, Any]) -> AppliedKernels:
    apply_fn = _liger_function(spec, device)
    import inspect

    accepted = inspect.signature(apply_fn).parameters
    unknown = sorted(set(options) - set(accepted) - {"model"})
    if unknown:
        raise KernelError(
            f"liger_kernel_config has {unknown}, which Liger's kernels for {spec.model_type!r} do not take; "
            f"accepted: {sorted(set(accepted) - {'model'})}"
        )
    switches = {name: p.default for name, p in accepted.items() if isinstance(p.default, bool)}
    switches.update(options)
    left_out = []
    obstacle = fused_head_obstacle(spec, plan.vocab.tp, plan.pp)
    if switches.get(FUSED_HEAD) and obstacle:
        switches[FUSED_HEAD] = False
        left_out.append((f"Liger {FUSED_HEAD}", obstacle))
    apply_fn(model=model, **switches)
    applied = tuple(f"Liger {name}" if name != FUSED_HEAD else FUSED_HEAD for name, on in switches.items() if on)
    return AppliedKernels(applied, tuple(left_out))


def _liger_function(spec: ModelSpec, device: torch.device):
    if device.type != "cuda":
        raise KernelError(
            f"use_liger_kernel needs a CUDA device (Liger's kernels are Triton GPU kernels); this run is on "
            f"{device.type}: drop use_liger_kernel (chunked_loss gives a head without materialised logits anywhere)"
        )
    if importlib.util.find_spec("liger_kernel") is None:
        raise KernelError("use_liger_kernel needs Liger: pip install 'galvatron-hf[kernels]' (liger-kernel)")
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    apply_fn = MODEL_TYPE_TO_APPLY_LIGER_FN.get(spec.model_type)
    if apply_fn is None:
        covered = sorted(MODEL_TYPE_TO_APPLY_LIGER_FN)
        raise KernelError(
            f"Liger has no kernels for model type {spec.model_type!r} (it covers {', '.join(covered)}): "
            "drop use_liger_kernel"
        )
    return apply_fn

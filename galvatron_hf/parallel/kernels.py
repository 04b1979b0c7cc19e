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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from galvatron_hf.adapters.spec import ActivationModel, ModelSpec
from galvatron_hf.parallel.chunked_loss import chunked_causal_lm_loss, fused_head_obstacle, install_chunked_loss
from galvatron_hf.parallel.compile import CompileConfig, apply_compile
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


    @property
    def liger_head(self) -> bool:
        """Whether Liger's fused linear cross-entropy is asked for (on unless switched off in its options)."""
        return self.liger and self.liger_options.get(FUSED_HEAD, True)

    def fuses_head(self, spec: ModelSpec, vocab_tp: int = 1, pp: int = 1) -> bool:
        """Whether the training loss will run without materialised logits under such a plan."""
        return bool(self.liger_head or self.chunked_loss) and fused_head_obstacle(spec, vocab_tp, pp) is None


def priced_for_kernels(spec: ModelSpec, config: KernelConfig | None, world_size: int) -> ModelSpec:
    """``spec`` with the head's memory as the kernels leave it, for the planner.

    A fused head keeps per token its input and the input's gradient (Liger computes it in forward), a chunked
    one its input alone (it recomputes each chunk's logits in backward), not the fp32 logits: for a 32k
    vocabulary and h = 2048, Liger's is 8 kB instead of 132 kB a token.
    Priced on one process only, where the plan's head is whole (vocab tp = pp = 1) so the head surely fuses;
    with more processes the search may choose a vocabulary-parallel head that keeps its logits, and the
    materialised price (never an under-estimate) stays.
    """
    if config is None or world_size != 1 or not config.fuses_head(spec):
        return spec
    kept = 2 if config.liger_head else 1  # input (+ its gradient)
    layers = tuple(
        dataclasses.replace(
            layer, activation=ActivationModel(replicated=kept * layer.hidden_size, index_replicated=1)
        )
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
    result = patch_model(model, spec, device, config, vocab_tp=plan.vocab.tp, pp=plan.pp)
    for line in result.describe():
        (logger.warning if line.startswith("not applied") else logger.info)("galvatron: %s", line)
    return result


def patch_model(
    model: nn.Module, spec: ModelSpec, device: torch.device, config: KernelConfig, vocab_tp: int = 1, pp: int = 1
) -> AppliedKernels:
    """The patching itself, for a head split ``vocab_tp`` ways and ``pp`` pipeline stages (the profiler
    patches its one-device model with ``vocab_tp = pp = 1``)."""
    result = AppliedKernels()
    if config.liger:
        result = _apply_liger(model, spec, device, config.liger_options, fused_head_obstacle(spec, vocab_tp, pp))
    if config.chunked_loss and FUSED_HEAD not in result.applied:
        install_chunked_loss(model, spec, vocab_tp=vocab_tp, pp=pp)
        result = AppliedKernels(result.applied + ("chunked_loss",), result.left_out)
    return result


def _apply_liger(
    model, spec: ModelSpec, device: torch.device, options: dict[str, Any], obstacle: str | None
) -> AppliedKernels:
    apply_fn = liger_function(spec, device)
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
    if switches.get(FUSED_HEAD) and obstacle:
        switches[FUSED_HEAD] = False
        left_out.append((f"Liger {FUSED_HEAD}", obstacle))
    apply_fn(model=model, **switches)
    applied = tuple(f"Liger {name}" if name != FUSED_HEAD else FUSED_HEAD for name, on in switches.items() if on)
    return AppliedKernels(applied, tuple(left_out))


def liger_function(spec: ModelSpec, device: torch.device):
    """Liger's patch function for this model type, or ``KernelError`` naming why it cannot run here."""
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


# ----- what the model profiler measures --------------------------------------------------------------------------
def kernel_label(kernels: KernelConfig | None, compile_config: CompileConfig | None) -> str:
    """The name of what runs in place of HF's modules ("liger+compile"; "" for none): a model profile records
    it, and a run checks that its profile timed the same kernels."""
    parts = []
    if kernels is not None and kernels.liger:
        parts.append("liger")
    if kernels is not None and kernels.chunked_loss:
        parts.append("chunked_loss")
    if compile_config is not None:
        parts.append(f"compile({compile_config.mode})" if compile_config.mode else "compile")
    return "+".join(parts)


@dataclass(frozen=True)
class ProfiledKernels:
    """The model profiler's view of a run's kernels: their label, how to patch its one-device model, and the
    training loss of a head that never materialises its logits (None: HF's head and loss)."""

    label: str
    prepare: Callable[[nn.Module], None] | None
    head_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None


def kernels_for_profiling(
    spec: ModelSpec, device: torch.device, kernels: KernelConfig | None, compile_config: CompileConfig | None
) -> ProfiledKernels:
    """What ``galvatron-hf profile model --use_liger_kernel / --torch_compile`` measures: the layers patched and
    compiled as training patches and compiles them on one device (head whole, no pipeline)."""
    label = kernel_label(kernels, compile_config)
    if not label:
        return ProfiledKernels("", None, None)
    def prepare(model: nn.Module) -> None:
        if kernels is not None:
            patch_model(model, spec, device, kernels)
        apply_compile(model, spec, compile_config)

    head_loss = None
    if kernels is not None and kernels.fuses_head(spec):
        head_loss = _liger_head_loss if kernels.liger_head else _chunked_head_loss
    return ProfiledKernels(label, prepare, head_loss)


def _liger_head_loss(head: nn.Linear, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    flat = hidden.reshape(-1, hidden.shape[-1])
    return LigerFusedLinearCrossEntropyLoss()(head.weight, flat, labels.reshape(-1), head.bias)


def _chunked_head_loss(head: nn.Linear, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return chunked_causal_lm_loss(hidden, head, labels)

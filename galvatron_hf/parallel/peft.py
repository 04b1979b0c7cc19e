"""PEFT (LoRA) models under any plan: the runtime parallelises the HF model inside the ``PeftModel``.

PEFT injects its adapters into the HF model in place (``q_proj`` becomes a ``lora.Linear`` holding the
original module as ``base_layer`` and ``lora_A`` / ``lora_B`` beside it), and ``PeftModel.forward`` of a LoRA
model is the base model's forward. So the runtime takes the base model (:func:`split_peft`) and applies the
plan to it as to any HF model; frozen parameters keep ``requires_grad=False`` through TP and FSDP2, so they
get no gradient and the Trainer gives the optimizer only the adapters.

Tensor parallelism splits a LoRA layer as its base layer is split (:func:`lora_tp_styles`), so that
``base(x) + B(A(x))`` runs on the local shards unchanged:

- column split (``q_proj``): the base and ``lora_B`` split their output features; ``lora_A`` (in -> r) stays
  whole on every TP rank, its input gradient all-reduced with the base layer's;
- row split (``o_proj``): the base and ``lora_A`` split their input features (``A``'s r outputs are summed
  over the TP group); ``lora_B`` (r -> out) stays whole.

``save_model`` writes what ``PeftModel.save_pretrained`` writes (``adapter_config.json``,
``adapter_model.safetensors``): :func:`adapter_state_dict` assembles the full adapter tensors from every
layout (TP / FSDP2 shards, pipeline stages) on rank 0, and the user's ``PeftModel`` saves them.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel

from galvatron_hf.adapters.trainable import is_tuner_layer

PEFT_PREFIX = "base_model.model."  # a LoRA PeftModel's names for its base model's parameters


class PeftError(ValueError):
    """A PEFT model or setting this runtime cannot run as given; the message names the fix."""


def split_peft(model: nn.Module) -> tuple[nn.Module, Any | None]:
    """(the HF model to parallelise, the ``PeftModel`` around it or None).

    Prompt-learning methods (prompt / prefix / p-tuning) change the inputs in ``PeftModel.forward``, which the
    runtime does not call: refused with the fix.
    """
    if not (hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None))):
        return model, None
    for name, config in model.peft_config.items():
        if getattr(config, "is_prompt_learning", False):
            raise PeftError(
                f"PEFT adapter {name!r} is {config.peft_type}, a prompt-learning method: GalvatronTrainer trains "
                "adapters injected into the model's layers (LoRA and its variants); use a LoraConfig"
            )
    return model.get_base_model(), model


def lora_tp_styles(
    path: str, module: nn.Module, base_style: ParallelStyle, sequence_parallel: bool = False
) -> dict[str, ParallelStyle]:
    """TP styles for ``module`` at ``path``: ``{path: base_style}``, or for a LoRA layer its base layer's and
    its adapters' (see the module docstring)."""
    if not is_tuner_layer(module):
        return {path: base_style}
    if sequence_parallel:
        raise PeftError(
            f"{path}: LoRA layers are not split with sequence parallelism yet; use a plan without sp for the "
            "blocks LoRA adapts"
        )
    _check_splittable(path, module, base_style)
    styles = {f"{path}.base_layer": base_style}
    for adapter in module.lora_A:
        if isinstance(base_style, ColwiseParallel):
            styles[f"{path}.lora_B.{adapter}"] = base_style  # same output layout as the base layer's
        else:
            styles[f"{path}.lora_A.{adapter}"] = RowwiseParallel(use_local_output=True)
    return styles


def _check_splittable(path: str, module: nn.Module, style: ParallelStyle) -> None:
    base = module.base_layer
    if not isinstance(base, nn.Linear) or not isinstance(style, (ColwiseParallel, RowwiseParallel)):
        raise PeftError(
            f"{path}: tensor parallelism splits LoRA on nn.Linear layers only (this is a {type(base).__name__}); "
            "leave it out of LoraConfig.target_modules or use a plan with tp = 1 where it lives"
        )
    if getattr(module, "lora_variant", None) or getattr(module, "lora_embedding_A", None):
        raise PeftError(
            f"{path}: LoRA variants (DoRA, ...) are not split by tensor parallelism; use plain LoRA or tp = 1"
        )


# ----- saving the adapter ------------------------------------------------------------------------------------


def adapter_state_dict(module: nn.Module, is_stage_lead: bool) -> dict[str, torch.Tensor] | None:
    """The trainable parameters of this rank's (stage) module as full CPU tensors, by HF name, on global rank 0
    (None elsewhere). Collective: every rank calls it. The ranks of a stage assemble their DTensor shards
    together; each stage's first rank (``is_stage_lead``) sends its stage's tensors to rank 0."""
    full = {name: _full_tensor(p) for name, p in module.named_parameters() if p.requires_grad}
    parts: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(full if is_stage_lead else {}, parts, dst=0)
    if parts is None:
        return None
    merged: dict[str, torch.Tensor] = {}
    for part in parts:
        merged.update(part)
    return merged


def _full_tensor(param: torch.Tensor) -> torch.Tensor:
    tensor = param.full_tensor() if isinstance(param, DTensor) else param
    return tensor.detach().to("cpu", copy=True)


def save_adapter(peft_model: Any, parallel_model: Any, output_dir: str | os.PathLike) -> None:
    """Write ``output_dir`` as ``peft_model.save_pretrained`` does, from the weights of ``parallel_model`` (a
    ``ParallelModel``). Collective; global rank 0 writes.

    PEFT picks the adapter tensors by visiting the model's LoRA layers; with pp > 1 rank 0 holds the first stage
    only, so it saves through a meta-device copy of the whole PEFT model (no memory) instead."""
    state = adapter_state_dict(parallel_model.module, parallel_model.dims.stage_rank == 0)
    if state is not None:
        saver = peft_model if parallel_model.plan.pp == 1 else _meta_skeleton(peft_model)
        saver.save_pretrained(os.fspath(output_dir), state_dict={PEFT_PREFIX + k: v for k, v in state.items()})
    dist.barrier()


def _meta_skeleton(peft_model: Any) -> Any:
    """The same PEFT model (base class, config, every adapter) built on the meta device."""
    from peft import get_peft_model

    base = peft_model.get_base_model()
    configs = {name: copy.deepcopy(config) for name, config in peft_model.peft_config.items()}
    with torch.device("meta"):
        skeleton = type(base)(copy.deepcopy(base.config))
        names = iter(configs)
        first = next(names)
        skeleton = get_peft_model(skeleton, configs[first], adapter_name=first)
        for name in names:
            skeleton.add_adapter(name, configs[name])
    return skeleton

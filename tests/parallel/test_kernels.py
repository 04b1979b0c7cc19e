"""Fused kernels: what cannot apply is refused with its fix, never dropped; flags map from TrainingArguments."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import runtime_cases as rc

from galvatron_hf.adapters import describe_model
from galvatron_hf.parallel.compile import CompileConfig
from galvatron_hf.parallel.kernels import KernelConfig, KernelError, apply_kernels


def _model_and_spec(family: str = "llama"):
    model = rc.make_model(family)
    return model, describe_model(model, seq_len=rc.SEQ)


def test_liger_is_refused_without_cuda():
    model, spec = _model_and_spec()
    plan = rc.uniform("one", 4, 1, "ddp").plan(1)
    with pytest.raises(KernelError, match="CUDA"):
        apply_kernels(model, spec, plan, torch.device("cpu"), KernelConfig(liger=True))


def test_chunked_loss_is_applied_and_reported():
    model, spec = _model_and_spec()
    plan = rc.uniform("one", 4, 1, "ddp").plan(1)
    applied = apply_kernels(model, spec, plan, torch.device("cpu"), KernelConfig(chunked_loss=True))
    assert applied.applied == ("chunked_loss",) and applied.fused_head
    assert apply_kernels(model, spec, plan, torch.device("cpu"), None).applied == ()


def test_flags_from_training_arguments():
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir="unused", use_liger_kernel=True, liger_kernel_config={"rope": False},
                             torch_compile_mode="max-autotune", use_cpu=True)
    assert KernelConfig.from_training_args(args) == KernelConfig(liger=True, liger_options={"rope": False})
    assert CompileConfig.from_training_args(args) == CompileConfig(backend="inductor", mode="max-autotune")
    plain = TrainingArguments(output_dir="unused", use_cpu=True)
    assert KernelConfig.from_training_args(plain) is None and CompileConfig.from_training_args(plain) is None


def test_one_process_plans_price_the_fused_head():
    from galvatron_hf.parallel.kernels import priced_for_kernels

    model, spec = _model_and_spec()
    fused = priced_for_kernels(spec, KernelConfig(chunked_loss=True), world_size=1)
    head, fused_head = spec.layers[-1], fused.layers[-1]
    assert fused_head.kind == "head" and fused_head.activation.fp32_sharded == 0 < head.activation.fp32_sharded
    assert fused.layers[:-1] == spec.layers[:-1]
    assert priced_for_kernels(spec, KernelConfig(chunked_loss=True), world_size=2) is spec  # head may be split
    no_head = KernelConfig(liger=True, liger_options={"fused_linear_cross_entropy": False})
    assert priced_for_kernels(spec, no_head, world_size=1) is spec

"""How a LoRA fine-tune is described and priced: the adapters count what PEFT adds and freezes, the planner prices
frozen parameters as weights only (no gradient, no AdamW state, no gradient sync), and `galvatron-hf search
--lora_rank` plans it.
No process group: single-process, cheap.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("peft", reason="PEFT tests need the peft extra: pip install galvatron-hf[peft]")

sys.path.insert(0, str(Path(__file__).parent))
import peft_cases as pc

from galvatron_hf.adapters import describe_model
from galvatron_hf.adapters.lora import describe_lora
from galvatron_hf.planner.cost_model import estimate_plan
from galvatron_hf.planner.search.infeasible import state_floor
from galvatron_hf.planner.search.problem import SearchProblem
from galvatron_hf.planner.uniform import uniform_plan
from galvatron_hf.profiler.builtin_hardware import builtin_hardware


def test_spec_counts_adapters_and_frozen_base():
    model = pc.lora_model()
    spec = describe_model(model)  # the PeftModel is read through its base model
    plain = describe_model(pc.cases.make_model("llama"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert spec.trainable_params == trainable > 0
    assert spec.total_params == sum(p.numel() for p in model.parameters())
    for lora_layer, layer in zip(spec.layers, plain.layers):
        assert lora_layer.frozen_params == layer.params  # the whole base is frozen
    assert plain.trainable_params == plain.total_params  # nothing frozen: every parameter trains


def test_describe_lora_matches_the_peft_model():
    config = pc.cases.make_model("llama").config
    from_config = describe_lora(config, pc.LORA["r"], pc.LORA["target_modules"])
    assert from_config.layers == describe_model(pc.lora_model()).layers
    with pytest.raises(ValueError, match="positive rank"):
        describe_lora(config, 0)


def with_trainable_share(spec, share: float):
    """``spec`` with ``share`` of every layer's parameters trainable, the rest frozen."""
    layers = tuple(replace(layer, frozen_params=layer.params - round(layer.params * share)) for layer in spec.layers)
    return replace(spec, layers=layers)


def test_frozen_parameters_are_priced_without_gradients_or_optimizer_state():
    spec = describe_model("meta-llama/Llama-2-7b-hf", seq_len=512)
    frozen = with_trainable_share(spec, 0.0)
    hardware = builtin_hardware("h100", 1)
    plan = uniform_plan(spec, 8, global_batch_size=8, dp_type="zero3")
    full, lora = estimate_plan(plan, spec, hardware).stages[0], estimate_plan(plan, frozen, hardware).stages[0]
    assert lora.grad_gb == pytest.approx(0.0, abs=1e-9) and lora.optimizer_gb == pytest.approx(0.0, abs=1e-9)
    assert full.optimizer_gb == pytest.approx(2 * full.param_gb)  # AdamW: 8 bytes to the fp32 weight's 4
    assert lora.param_gb == pytest.approx(full.param_gb)  # the weights are still held
    assert lora.peak_memory_gb < full.peak_memory_gb - full.optimizer_gb


def test_gradient_sync_is_priced_over_trainable_parameters():
    """FSDP2 reduces the gradients of trainable parameters only: with 1 % of the weights training, a DDP step's
    all-reduce moves 1 % of the bytes, a frozen model none; ZeRO-3's parameter all-gathers still move them all."""
    spec = describe_model("meta-llama/Llama-2-7b-hf", seq_len=512)
    hardware = builtin_hardware("h100", 1)
    communication = {}
    for dp_type in ("ddp", "zero3"):
        plan = uniform_plan(spec, 8, global_batch_size=8, dp_type=dp_type)
        for share in (1.0, 0.01, 0.0):
            stage = estimate_plan(plan, with_trainable_share(spec, share), hardware).stages[0]
            communication[dp_type, share] = stage.communication_s
    assert communication["ddp", 0.0] == 0.0 < communication["ddp", 0.01] < 0.01 * communication["ddp", 1.0]
    assert 0.0 < communication["zero3", 0.0] < communication["zero3", 0.01] < communication["zero3", 1.0]
    gathers_only = communication["zero3", 0.0]
    assert communication["zero3", 0.01] - gathers_only < 0.01 * (communication["zero3", 1.0] - gathers_only)


def test_state_floor_counts_frozen_parameters_as_weights_only():
    """The search's proof that nothing fits in device memory (the state alone, 16 bytes per parameter over all
    GPUs) counts a frozen parameter's fp32 weight only: a 70B LoRA fine-tune is not sent to CPU offload."""
    spec = describe_model("meta-llama/Llama-2-70b-hf")
    hardware = builtin_hardware("h100", 1)
    full = state_floor(SearchProblem.create(spec, hardware, 8, 80))
    lora = state_floor(SearchProblem.create(with_trainable_share(spec, 0.0005), hardware, 8, 80))
    assert full.proves_no_fit and not lora.proves_no_fit
    assert lora.state_gb == pytest.approx(full.state_gb / 4, rel=1e-2)  # 4 of 16 bytes a parameter
    assert "4 per frozen one" in lora.reason() and "16 bytes per parameter" in full.reason()

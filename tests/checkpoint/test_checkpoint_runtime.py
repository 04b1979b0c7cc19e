"""Checkpoints through the real runtime: `parallelize` layouts, not hand-built ones.

One 4-rank launch: T5 under TP2 x ZeRO-3 with a vocabulary-parallel shared embedding loads its HF
directory exactly; a meta-built Llama parallelised by a mixed per-layer plan (TP 1/2/4/2, ZeRO-3 / DDP /
ZeRO-2, vocabulary TP2) loads an HF directory with exact weights, trains a step, saves; the checkpoint then
loads into a 2-stage pipeline plan (ZeRO-3 inside each stage) with identical model and optimizer state.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM, T5ForConditionalGeneration

from galvatron_hf.checkpoint import load_checkpoint, load_hf_pretrained, save_checkpoint
from galvatron_hf.planner.plan import LayerStrategy, Plan, VocabStrategy
from galvatron_hf.testing.distributed import run_distributed
from tests.parallel.runtime_cases import GLOBAL_BATCH, SEQ, make_model, split_batch, standard_cases, uniform
from tests.checkpoint.test_checkpoint import differing, full_states
from tests.checkpoint.test_checkpoint_hf_load import full_state


def pipeline_plan(world: int) -> Plan:
    dp = world // 2
    layers = [LayerStrategy(stage=i // 2, tp=1, dp=dp, dp_type="zero3") for i in range(4)]
    return Plan(
        world_size=world, pp=2, schedule="gpipe", global_batch_size=GLOBAL_BATCH, num_micro_batches=2,
        layers=layers, vocab=VocabStrategy(tp=1, dp=dp, dp_type="zero3"), mixed_precision="fp32",
    )  # fmt: skip


def _parallelized_on_meta(plan: Plan, family: str = "llama"):
    from galvatron_hf.adapters import describe_model
    from galvatron_hf.parallel import parallelize

    config = make_model(family).config
    with torch.device("meta"):
        model = type(make_model(family))(config)
    spec = describe_model(model, seq_len=SEQ)
    return parallelize(model, plan, spec=spec, device="cpu", mixed_precision="fp32")


def _runtime_round_trip(rank: int, world: int, hf_dir: str, t5_dir: str, ckpt: str) -> dict:
    mixed = next(case for case in standard_cases() if case.name == "mixed_1242").plan(world)
    pm = _parallelized_on_meta(mixed)
    load_hf_pretrained(pm.module, hf_dir)
    reference = LlamaForCausalLM.from_pretrained(hf_dir).state_dict()
    loaded = full_state(pm.module)
    load_differs = [key for key, value in loaded.items() if not torch.equal(value, reference[key])]

    t5 = _parallelized_on_meta(uniform("t5_tp2", 4, 2, "zero3").plan(world), family="t5")  # vocab TP2, 3-way tie
    load_hf_pretrained(t5.module, t5_dir)
    t5_reference = T5ForConditionalGeneration.from_pretrained(t5_dir).state_dict()
    t5_differs = [key for key, value in full_state(t5.module).items() if not torch.equal(value, t5_reference[key])]

    optimizer = torch.optim.AdamW(pm.parameters(), lr=1e-2)
    ids = torch.randint(0, 128, (GLOBAL_BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    pm.train_step(split_batch({"input_ids": ids, "labels": ids}, pm.data_rank, pm.data_size))
    pm.step(optimizer)
    optimizer.zero_grad()
    save_checkpoint(ckpt, model=pm.module, optimizer=optimizer, plan=mixed, step=1)
    saved_model, saved_optim = full_states(pm.module, optimizer)

    staged = _parallelized_on_meta(pipeline_plan(world))
    staged_optimizer = torch.optim.AdamW(staged.parameters(), lr=1e-2)
    state = load_checkpoint(ckpt, model=staged.module, optimizer=staged_optimizer, plan=pipeline_plan(world))
    resumed_model, resumed_optim = full_states(staged.module, staged_optimizer)
    return {
        "loaded_keys": sorted(loaded),
        "load_differs": load_differs,
        "t5_differs": t5_differs,
        "saved": (saved_model, saved_optim),
        "resumed": (resumed_model, resumed_optim),
        "state": state,
    }


@pytest.mark.distributed
def test_runtime_layouts_load_hf_weights_and_reshard_checkpoints(tmp_path):
    hf_dir, t5_dir, ckpt = tmp_path / "hf", tmp_path / "t5", tmp_path / "ckpt"
    make_model("llama", seed=7).save_pretrained(hf_dir, max_shard_size="100KB")
    make_model("t5", seed=8).save_pretrained(t5_dir)
    results = run_distributed(_runtime_round_trip, 4, str(hf_dir), str(t5_dir), str(ckpt), timeout_s=300)
    all_keys = set(make_model("llama").state_dict())
    saved_model, saved_optim = results[0]["saved"]
    stage_keys = []
    for rank, result in enumerate(results):
        assert set(result["loaded_keys"]) == all_keys and result["load_differs"] == [], f"rank {rank}"
        assert result["t5_differs"] == [], f"rank {rank}: T5 weights differ"
        resumed_model, resumed_optim = result["resumed"]
        assert differing(resumed_model, saved_model) == [], f"rank {rank}: model differs"
        assert resumed_optim and differing(resumed_optim, saved_optim) == [], f"rank {rank}: optimizer differs"
        assert result["state"].step == 1 and result["state"].rng == "rank0"  # another plan: rank 0's RNG
        stage_keys.append(set(resumed_model))
    assert stage_keys[0] == stage_keys[1] and stage_keys[2] == stage_keys[3]
    assert stage_keys[0] | stage_keys[2] == all_keys and not stage_keys[0] & stage_keys[2]

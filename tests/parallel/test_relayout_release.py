"""The runtime must not keep a discarded model alive (relayout bookkeeping once held the last forward's
activations and, through their autograd graph, the whole model: about 6 GB per model on an H100)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from galvatron_hf.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed


def _train_and_discard(rank: int, world_size: int) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from galvatron_hf.adapters import describe_model
    from galvatron_hf.parallel import parallelize
    from galvatron_hf.planner.search import uniform_plan

    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    spec = describe_model(config, seq_len=32)
    results = {}
    for tp in (1, 2):
        plan = uniform_plan(spec, world_size, global_batch_size=4, tp=tp, vocab_tp=1, mixed_precision="fp32")

        def train_once():
            torch.manual_seed(0)
            pm = parallelize(LlamaForCausalLM(config), plan, device=torch.device("cpu"))
            ids = torch.randint(0, 256, (4 // pm.data_size, 32))
            pm.eval_step({"input_ids": ids, "labels": ids})
            pm.train_step({"input_ids": ids, "labels": ids})  # last: a forward with autograd graph
            return weakref.ref(pm.module), weakref.ref(next(pm.module.parameters()))

        module, parameter = train_once()
        gc.collect()
        results[f"tp{tp}"] = (module() is None, parameter() is None)
    return results


def test_a_discarded_parallel_model_is_freed():
    # tp=2 with vocab tp=1 re-lays the batch between the embedding, the blocks and the head
    for result in run_distributed(_train_and_discard, 2, timeout_s=300):
        assert result == {"tp1": (True, True), "tp2": (True, True)}

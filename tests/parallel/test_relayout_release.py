"""Relayout between layers of different layouts, on 2 gloo ranks (one launch):

- the runtime must not keep a discarded model alive (relayout bookkeeping once held the last forward's
  activations and, through their autograd graph, the whole model: about 6 GB per model on an H100);
- batches whose rows do not split over a block's data-parallel ranks (an epoch's last batch, a small
  evaluation batch) give one process's loss and gradients: Llama's embedding and head on TP2 over the whole
  batch, blocks alternating between 2 data-parallel ranks and TP2; 5 rows in 2 micro-batches of 3 (padded to 4
  in the data-parallel blocks, with their padding masks) and 2, and an evaluation batch of 1 row.
"""

from __future__ import annotations

import gc
import sys
import weakref
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import runtime_cases as rc

from galvatron_hf.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed
UNEVEN_ROWS = 5
UNEVEN = rc.Case(
    "uneven_rows",
    ((1, "zero3", False), (2, "ddp", False), (1, "ddp", True), (2, "zero3", False)),
    vocab=(2, "ddp"),
    micro_batches=2,
)


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


def _uneven_rows() -> dict:
    """Loss and full gradients of one step on ``UNEVEN_ROWS`` rows, and the evaluation loss of a single row."""
    from galvatron_hf.parallel import parallelize

    batch = rc.make_batch("llama", 0, size=UNEVEN_ROWS)
    pm = parallelize(rc.make_model("llama"), UNEVEN.plan(2), device="cpu")
    loss = pm.train_step(batch).item()
    grads = {n: rc._full(p.grad) for n, p in pm.module.named_parameters()}
    return {"loss": loss, "grads": grads, "eval_loss": pm.eval_step({k: v[:1] for k, v in batch.items()}).item()}


def _relayout_checks(rank: int, world_size: int) -> dict:
    return {"release": _train_and_discard(rank, world_size), "uneven": _uneven_rows()}


@pytest.fixture(scope="module")
def launch():
    return run_distributed(_relayout_checks, 2, timeout_s=300)


def test_a_discarded_parallel_model_is_freed(launch):
    # tp=2 with vocab tp=1 re-lays the batch between the embedding, the blocks and the head
    for result in launch:
        assert result["release"] == {"tp1": (True, True), "tp2": (True, True)}


def test_rows_that_do_not_split_over_a_layout_give_one_process_results(launch):
    model = rc.make_model("llama")
    batch = rc.make_batch("llama", 0, size=UNEVEN_ROWS)
    loss = model(**batch).loss
    loss.backward()
    with torch.no_grad():
        eval_loss = model(**{k: v[:1] for k, v in batch.items()}).loss.item()
    for rank, result in enumerate(launch):
        got = result["uneven"]
        assert got["eval_loss"] == pytest.approx(eval_loss, rel=1e-5), f"rank {rank}"
        assert got["loss"] == pytest.approx(loss.item(), rel=1e-5), f"rank {rank}"
        for name, param in model.named_parameters():
            error = (got["grads"][name] - param.grad).norm().item()
            assert error <= 1e-5 * param.grad.norm().item() + 1e-9, f"rank {rank}: gradient of {name} off by {error:.2e}"

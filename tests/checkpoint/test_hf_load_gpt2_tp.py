"""GPT-2's fused q/k/v (`c_attn`, a Conv1D) under TP: weights and optimizer state move in and out exactly.

Regression tests: an earlier split made `load_hf_pretrained` put q/k/v columns on the wrong ranks silently
(the loss differed from the single-process model with no error), and saving AdamW's state of the strided
`c_attn` failed in DCP ("overlapping chunks").
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, GPT2Config, GPT2LMHeadModel

from galvatron_hf.planner.plan import LayerStrategy, Plan, VocabStrategy
from galvatron_hf.testing.distributed import run_distributed


def _batch() -> dict:
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "labels": ids}


TP2_PLAN = Plan(world_size=2, pp=1, schedule="gpipe", global_batch_size=2, num_micro_batches=1,
                layers=[LayerStrategy(0, 2, 1, "zero3", False)] * 2, vocab=VocabStrategy(2, 1, "ddp"),
                seq_len=16, mixed_precision="fp32")


def _tp2_model(path: str):
    from galvatron_hf.parallel import parallelize
    from galvatron_hf.checkpoint import load_hf_pretrained

    with torch.device("meta"):
        model = GPT2LMHeadModel(AutoConfig.from_pretrained(path))
    parallel = parallelize(model, TP2_PLAN, device="cpu")
    load_hf_pretrained(parallel.module, path)
    return parallel


def _tp2_loss(rank: int, world_size: int, path: str) -> float:
    return float(_tp2_model(path).eval_step(_batch()))


def _train_step(parallel, optimizer) -> float:
    loss = float(parallel.train_step(_batch()))
    parallel.step(optimizer)
    optimizer.zero_grad()
    return loss


def _tp2_checkpoint_round_trip(rank: int, world_size: int, path: str, checkpoint: str) -> tuple[float, float]:
    """Train a step, save (AdamW state included), load into a fresh TP2 model: the next steps must agree."""
    from galvatron_hf.checkpoint import load_checkpoint, save_checkpoint

    original = _tp2_model(path)
    optimizer = torch.optim.AdamW(original.parameters(), lr=1e-2)
    _train_step(original, optimizer)
    save_checkpoint(checkpoint, model=original.module, optimizer=optimizer, plan=TP2_PLAN, step=1)
    resumed = _tp2_model(path)
    resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    load_checkpoint(checkpoint, model=resumed.module, optimizer=resumed_optimizer, plan=TP2_PLAN)
    _train_step(original, optimizer)
    _train_step(resumed, resumed_optimizer)
    return _train_step(original, optimizer), _train_step(resumed, resumed_optimizer)


def _save_tiny_gpt2(path) -> None:
    torch.manual_seed(0)
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=64,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    GPT2LMHeadModel(config).save_pretrained(path)


def test_gpt2_pretrained_weights_load_into_tp2_exactly(tmp_path):
    _save_tiny_gpt2(tmp_path)
    reference = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = float(reference(**_batch()).loss)
    losses = run_distributed(_tp2_loss, 2, str(tmp_path))
    assert losses[0] == losses[1]
    assert abs(losses[0] - expected) <= 1e-5 * abs(expected)


def test_gpt2_tp2_checkpoint_with_adamw_state_resumes_exactly(tmp_path):
    _save_tiny_gpt2(tmp_path / "pretrained")
    results = run_distributed(_tp2_checkpoint_round_trip, 2, str(tmp_path / "pretrained"), str(tmp_path / "ckpt"))
    for original, resumed in results:
        assert resumed == original  # same weights and AdamW moments: the same arithmetic, bit for bit

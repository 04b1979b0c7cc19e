"""The chunked causal-LM loss: HF's loss and gradients without the whole batch's logits; refusals name the fix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import runtime_cases as rc

from galvatron_hf.adapters import describe_model
from galvatron_hf.parallel.chunked_loss import (
    ChunkedLossError,
    check_chunked_loss,
    chunk_tokens_for,
    chunked_causal_lm_loss,
    install_chunked_loss,
)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_training_forward_matches_hf_loss_and_gradients(family):
    batch = rc.make_batch(family, 0)
    reference = rc.make_model(family)
    reference(**batch).loss.backward()
    model = rc.make_model(family)
    install_chunked_loss(model, describe_model(model, seq_len=rc.SEQ))
    output = model(**batch)
    assert output.logits is None  # nothing of vocabulary size was kept
    output.loss.backward()
    assert output.loss.item() == pytest.approx(reference(**batch).loss.item(), rel=1e-6)
    want = _grads(reference)
    for name, grad in _grads(model).items():
        assert (grad - want[name]).norm() <= 1e-5 * want[name].norm() + 1e-9, name
    model.eval()
    assert model(**batch).logits is not None  # evaluation keeps the model's own forward and its logits


def test_chunks_sum_items_and_empty_batches():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50)
    hidden = torch.randn(3, 7, 8, requires_grad=True)
    labels = torch.randint(0, 50, (3, 7))
    logits = head(hidden)[:, :-1].reshape(-1, 50)
    want = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), reduction="sum")
    for chunk in (1, 5, 100):
        got = chunked_causal_lm_loss(hidden, head, labels, num_items_in_batch=4, chunk_tokens=chunk)
        assert got.item() == pytest.approx(want.item() / 4, rel=1e-6)
    empty = chunked_causal_lm_loss(hidden, head, torch.full_like(labels, -100))
    empty.backward()
    assert empty.item() == 0 and torch.isfinite(hidden.grad).all() and hidden.grad.abs().sum() == 0
    assert chunk_tokens_for(hidden_size=2048, vocab_size=32000, tokens=32768) == 2048


def test_refusals_name_the_fix():
    llama = rc.make_model("llama")
    spec = describe_model(llama, seq_len=rc.SEQ)
    with pytest.raises(ChunkedLossError, match="vocab tp = 1"):
        check_chunked_loss(llama, spec, vocab_tp=2, pp=1)
    with pytest.raises(ChunkedLossError, match="pipeline"):
        check_chunked_loss(llama, spec, vocab_tp=1, pp=2)
    bert = rc.make_model("bert")
    with pytest.raises(ChunkedLossError, match="not a causal LM"):
        check_chunked_loss(bert, describe_model(bert, seq_len=rc.SEQ), vocab_tp=1, pp=1)

"""ActivationModel arithmetic: how each field scales with TP, dtype, attention implementation and batch."""

from __future__ import annotations

import pytest

from galvatron_hf.adapters import describe_model
from galvatron_hf.adapters.spec import ActivationModel


def one(**field) -> ActivationModel:
    return ActivationModel(**field)


@pytest.mark.parametrize(
    "field,bytes_at_tp1_bf16,bytes_at_tp2_fp32",
    [
        ("replicated", 2, 4),
        ("sharded", 2, 2),
        ("fp32_replicated", 4, 4),
        ("fp32_sharded", 4, 2),
        ("upcast_replicated", 4, 0),  # an fp32 copy of an fp32 tensor is the tensor itself
        ("index_replicated", 8, 8),
        ("bool_replicated", 1, 1),
        ("bool_sharded", 1, 0.5),
        ("fused_attention", 2, 2),  # sdpa only
    ],
)
def test_per_token_fields(field, bytes_at_tp1_bf16, bytes_at_tp2_fp32):
    model = one(**{field: 1.0})
    assert model.saved_bytes(10, tp=1, dtype_bytes=2) == 10 * bytes_at_tp1_bf16
    assert model.saved_bytes(10, tp=2, dtype_bytes=4) == 10 * bytes_at_tp2_fp32


def test_eager_fields_scale_with_the_key_length_and_vanish_under_sdpa():
    model = one(eager_scores=1, eager_scores_fp32=1, eager_scores_cast=1, eager_scores_bool=1, eager_sharded=1)
    # per token: eager_sharded 2 bytes; per key: 2 + 4 + 2 (cast in bf16) + 1 (mask)
    assert model.saved_bytes(8, dtype_bytes=2, attn_impl="eager", kv_seq_len=16) == 8 * (2 + 9 * 16)
    assert model.saved_bytes(8, dtype_bytes=4, attn_impl="eager") == 8 * (4 + (4 + 4 + 0 + 1) * 8)
    assert model.saved_bytes(8, dtype_bytes=2, attn_impl="sdpa") == 0
    assert model.saved_bytes(8, tp=2, dtype_bytes=2, attn_impl="eager") == 8 * (1 + 9 * 8 / 2)


def test_checkpointing_keeps_only_the_input_and_masks_follow_mask_bytes():
    model = one(replicated=5, sharded=7, checkpointed=1, bool_replicated=1)
    assert model.saved_bytes(10, dtype_bytes=2, checkpoint=True) == 20
    assert model.saved_bytes(10, dtype_bytes=4, mask_bytes=4) - model.saved_bytes(10, dtype_bytes=4) == 30


def test_micro_batch_terms_are_added_once():
    model = one(sharded=1, batch_index=3, batch_fused=10, batch_checkpointed=20, checkpointed=1)
    assert model.saved_bytes(5, dtype_bytes=2, attn_impl="sdpa", samples=4) == 4 * 10 + 3 * 8 + 10 * 2
    assert model.saved_bytes(5, dtype_bytes=2, attn_impl="eager", samples=4) == 4 * 10 + 3 * 8
    assert model.saved_bytes(5, tp=2, dtype_bytes=2, checkpoint=True, samples=4) == 4 * 10 + 20 / 2 * 2


def test_tp_shrinks_a_llama_block_but_not_its_replicated_part():
    block = describe_model("meta-llama/Llama-2-7b", seq_len=2048).blocks[0]
    full, half = block.activation_bytes(tp=1), block.activation_bytes(tp=2)
    replicated = block.activation.replicated * 2 + block.activation.fp32_replicated * 4
    assert half > full / 2
    assert full - half == pytest.approx((full - replicated * 2048) / 2)
    assert block.activation_bytes(checkpoint=True) == 2048 * 4096 * 2  # bf16 block input

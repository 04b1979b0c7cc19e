"""Why PyTorch's FSDP2 warning on T5 ("FSDP2-wrapped module (FSDPT5Block) returned a view tensor ... an in-place
op on this view ... can produce wrong gradients") does not apply: the one view a T5 block returns is its
relative position bias (``position_bias[:, :, -seq:, :]``), and nothing modifies it in place (its version
counter is unchanged after forward and backward), so the pre-backward hook FSDP2 registers on it is never
dropped. The losses of T5 under ZeRO-3 and pipelines are compared with one process in tests/trainer."""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten
from transformers import T5Config, T5ForConditionalGeneration


def test_the_only_view_a_t5_block_returns_is_its_position_bias_and_it_is_never_modified_in_place():
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=4,
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
    )  # fmt: skip
    model = T5ForConditionalGeneration(config)
    views: list[tuple[str, int, torch.Tensor, int]] = []

    def record(name):
        def hook(module, inputs, output):
            flat, _ = tree_flatten(output)
            views.extend((name, i, t, t._version) for i, t in enumerate(flat) if torch.is_tensor(t) and t._is_view())

        return hook

    for name, module in model.named_modules():
        if type(module).__name__ == "T5Block":
            module.register_forward_hook(record(name))
    ids = torch.randint(1, 64, (2, 6))
    model(input_ids=ids, labels=ids).loss.backward()
    heads, seq = config.num_heads, ids.shape[1]
    assert len(views) == 4 and all(index == 1 for _, index, _, _ in views), "output 1: the position bias"
    assert all(tensor.shape == (1, heads, seq, seq) for _, _, tensor, _ in views)
    assert [tensor._version for _, _, tensor, _ in views] == [version for *_, version in views], "never in place"

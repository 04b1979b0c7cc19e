"""On one CUDA device: GalvatronTrainer with CPU offload trains to the losses of the same plan without it.

The CPU tests (tests/parallel/test_offload.py) run FSDP2's offload path where host and device are one; only a
GPU shows where the shards live: in host memory, with the Trainer leaving the model where the plan put it,
and the gradient norm for clipping reduced over host gradients.
"""

from __future__ import annotations

import tempfile

import pytest
import torch

pytestmark = pytest.mark.gpu


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, samples: int, seq: int, vocab: int) -> None:
        self.ids = torch.randint(0, vocab, (samples, seq), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def _train(offload: bool) -> tuple[list[float], set[str]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from galvatron_hf import GalvatronTrainer, GalvatronTrainingArguments

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    args = GalvatronTrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3,
        max_grad_norm=0.5, logging_steps=1, save_strategy="no", report_to=[], seed=0,
        dp_type="zero3", offload=offload, seq_len=16,
    )
    trainer = GalvatronTrainer(model, args, train_dataset=_Tokens(12, 16, 128))
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    devices = {p.to_local().device.type if hasattr(p, "to_local") else p.device.type
               for p in trainer.model.parameters()}
    return losses, devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_offloaded_training_keeps_shards_on_the_host_and_matches_the_device_run():
    on_device, device_types = _train(offload=False)
    offloaded, host_types = _train(offload=True)
    assert device_types == {"cuda"}
    assert host_types == {"cpu"}, "offloaded shards stay in host memory"
    assert offloaded == pytest.approx(on_device, rel=1e-4)

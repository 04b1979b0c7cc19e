"""Models no adapter describes (Bloom, GPT-NeoX, a custom module inside a PreTrainedModel) for
``test_plain_data_parallel_any_model.py``: built here so spawned ranks can import them."""

from __future__ import annotations

import os
from typing import Any

import torch
import trainer_cases as cases
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput


class TinyConfig(PretrainedConfig):
    model_type = "tiny_custom_lm"

    def __init__(self, vocab_size: int = cases.VOCAB, hidden_size: int = 32, num_layers: int = 2, **kwargs: Any):
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden_size, num_layers
        super().__init__(**kwargs)


class Block(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(hidden, 2 * hidden), nn.Linear(2 * hidden, hidden)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.down(torch.relu(self.up(hidden_states)))


class TinyForCausalLM(PreTrainedModel):
    """A plain nn.Module stack in a PreTrainedModel: next-token loss over the labels, as HF causal LMs."""

    config_class = TinyConfig
    _no_split_modules = ["Block"]

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config.hidden_size) for _ in range(config.num_layers))
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(self, input_ids, labels=None, attention_mask=None, **kwargs: Any) -> CausalLMOutput:
        hidden = self.embed(input_ids)
        for block in self.blocks:
            hidden = block(hidden)
        logits = self.head(hidden)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutput(loss=loss, logits=logits)


def make_model(kind: str):
    import transformers as tf

    torch.manual_seed(0)
    if kind == "bloom":
        return tf.BloomForCausalLM(tf.BloomConfig(vocab_size=cases.VOCAB, hidden_size=32, n_layer=2, n_head=4))
    if kind == "gpt_neox":
        config = tf.GPTNeoXConfig(
            vocab_size=cases.VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
        )
        return tf.GPTNeoXForCausalLM(config)
    return TinyForCausalLM(TinyConfig())


RUNS = {"bloom/ddp": ("bloom", "ddp"), "bloom/zero3": ("bloom", "zero3"), "gpt_neox/zero3": ("gpt_neox", "zero3"),
        "custom/zero2": ("custom", "zero2")}  # fmt: skip


def plain_trainer_losses(kind: str, output_dir: str) -> list[float]:
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(**cases.common_arguments(output_dir, per_device_train_batch_size=cases.GLOBAL_BATCH))
    trainer = Trainer(make_model(kind), args, train_dataset=cases.make_dataset("llama"), data_collator=cases.collate)
    trainer.train()
    return cases.logged_losses(trainer.state.log_history)


def galvatron_runs(rank: int, world_size: int, workdir: str) -> dict[str, Any]:
    from galvatron_hf.trainer import GalvatronTrainer, GalvatronTrainingArguments

    results: dict[str, Any] = {}
    for name, (kind, dp_type) in RUNS.items():
        values = cases.common_arguments(os.path.join(workdir, name), global_batch_size=cases.GLOBAL_BATCH)
        trainer = GalvatronTrainer(
            make_model(kind),
            GalvatronTrainingArguments(**values, dp_type=dp_type),
            train_dataset=cases.make_dataset("llama"),
            data_collator=cases.collate,
        )
        trainer.train()
        results[name] = {"losses": cases.logged_losses(trainer.state.log_history), "family": trainer.resolved_plan.spec.family}
    try:
        GalvatronTrainer(make_model("bloom"), GalvatronTrainingArguments(**cases.common_arguments(workdir), tp=2))
    except ValueError as err:
        results["refusal"] = str(err)
    return results

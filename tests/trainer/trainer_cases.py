"""Shared pieces of the trainer tests: tiny models, synthetic datasets, arguments, the plain-Trainer reference
and the per-rank worker that trains with GalvatronTrainer and reports its logged losses.

Imported by the test modules and, through ``run_distributed``'s spawn, by every rank.
"""

from __future__ import annotations

import os
from typing import Any

import torch

VOCAB = 128
SEQ = 8
SAMPLES = 64
GLOBAL_BATCH = 8
STEPS = 5


def make_model(family: str, seed: int = 0):
    import transformers as tf

    torch.manual_seed(seed)
    if family == "llama":
        config = tf.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            attention_dropout=0.0,
            tie_word_embeddings=False,
        )
        return tf.LlamaForCausalLM(config).float()
    if family == "t5":
        config = tf.T5Config(
            vocab_size=VOCAB,
            d_model=64,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            dropout_rate=0.0,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            decoder_start_token_id=0,
            pad_token_id=0,
        )
        return tf.T5ForConditionalGeneration(config).float()
    raise ValueError(family)


def make_dataset(family: str, samples: int = SAMPLES, seed: int = 1):
    """Fixed-length synthetic samples built with ``datasets``; some labels masked (uneven item counts)."""
    import datasets

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (samples, SEQ), generator=gen)
    labels = torch.randint(1, VOCAB, (samples, SEQ), generator=gen) if family == "t5" else ids.clone()
    labels[torch.rand(samples, SEQ, generator=gen) < 0.25] = -100
    columns = {
        "input_ids": ids.tolist(),
        "attention_mask": torch.ones_like(ids).tolist(),
        "labels": labels.tolist(),
    }
    return datasets.Dataset.from_dict(columns)


def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {key: torch.tensor([f[key] for f in features]) for key in features[0]}


def common_arguments(output_dir: str, **overrides: Any) -> dict[str, Any]:
    values = {
        "output_dir": output_dir,
        "max_steps": STEPS,
        "learning_rate": 5e-3,
        "logging_steps": 1,
        "report_to": "none",
        "seed": 0,
        "save_strategy": "no",
        "disable_tqdm": True,
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "optim": "adamw_torch",
        "remove_unused_columns": False,
        "lr_scheduler_type": "linear",
        "warmup_steps": 1,
    }
    values.update(overrides)
    return values


def logged_losses(log_history: list[dict[str, Any]]) -> list[float]:
    return [entry["loss"] for entry in log_history if "loss" in entry]


def reference_run(family: str, output_dir: str, **overrides: Any) -> dict[str, Any]:
    """The plain HF Trainer, one process, global batch in one loader batch: losses, eval loss, final logits."""
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        **common_arguments(
            output_dir,
            per_device_train_batch_size=GLOBAL_BATCH,
            per_device_eval_batch_size=GLOBAL_BATCH,
            **overrides,
        )
    )
    trainer = Trainer(
        make_model(family),
        args,
        train_dataset=make_dataset(family),
        eval_dataset=make_dataset(family, 16, seed=2),
        data_collator=collate,
    )
    trainer.train()
    eval_loss = trainer.evaluate()["eval_loss"]
    return {
        "losses": logged_losses(trainer.state.log_history),
        "eval_loss": eval_loss,
        "logits": logits(trainer.model),
    }


@torch.no_grad()
def logits(model) -> torch.Tensor:
    """Logits of a fixed batch: the fingerprint of a model's weights."""
    batch = collate(
        [make_dataset("t5" if model.config.is_encoder_decoder else "llama", 4, seed=3)[i] for i in range(4)]
    )
    model.eval()
    return model(**batch).logits.float()


def galvatron_worker(rank: int, world_size: int, family: str, runs: list[dict[str, Any]], workdir: str) -> list[Any]:
    """Train one GalvatronTrainer per run (``flags``: argument overrides) and report what each run logged.

    A run may ``evaluate`` after training and ``export`` (``trainer.save_model``) to ``workdir/<export>``.
    """
    from galvatron_hf.trainer import GalvatronTrainer, GalvatronTrainingArguments

    results = []
    for index, run in enumerate(runs):
        flags = dict(run.get("flags", {}))
        resume = flags.pop("resume_from_checkpoint", None)
        output_dir = os.path.join(workdir, run.get("dir", f"run{index}"))
        args = GalvatronTrainingArguments(**common_arguments(output_dir, global_batch_size=GLOBAL_BATCH, **flags))
        trainer = GalvatronTrainer(
            make_model(family),
            args,
            train_dataset=make_dataset(family),
            eval_dataset=make_dataset(family, 16, seed=2),
            data_collator=collate,
        )
        trainer.train(resume_from_checkpoint=os.path.join(workdir, resume) if resume else None)
        result = {
            "losses": logged_losses(trainer.state.log_history),
            "plan": trainer.plan,
        }
        if run.get("logits"):  # the parallel model's own logits (pp = 1: every rank holds the whole model)
            result["logits"] = logits(trainer.model)
        if run.get("evaluate"):
            result["eval_loss"] = trainer.evaluate()["eval_loss"]
        if run.get("export"):
            trainer.save_model(os.path.join(workdir, run["export"]))
        result["report"] = trainer.plan_report.summary
        result["output_dir"] = output_dir
        results.append(result)
    return results

"""Cases of the evaluation / prediction tests (and of training from an iterable, fp16 scheduling): a tiny BERT
sequence classifier and a tiny Llama causal LM, their data, metrics, the single-process plain-Trainer reference
and the per-rank worker. Imported by the test module and, through ``run_distributed``'s spawn, by every rank.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import trainer_cases as cases
from torch.utils.data import IterableDataset
from transformers import TrainerCallback

EVAL_SAMPLES = 13  # 13 = 8 + 5 and 4 + 4 + 4 + 1: the last step is uneven in every layout below
EVAL_BATCH = 2  # per data-parallel group
NUM_LABELS = 3
SKIPPED_STEP = 3  # the fp16 run overflows on purpose in this step


def make_model(family: str, seed: int = 0):
    import transformers as tf

    if family == "llama":
        return cases.make_model("llama", seed)
    torch.manual_seed(seed)
    config = tf.BertConfig(
        vocab_size=cases.VOCAB,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=NUM_LABELS,
    )
    return tf.BertForSequenceClassification(config).float()


def make_dataset(family: str, samples: int, seed: int, labels: bool = True):
    """Llama: the trainer tests' LM samples. BERT: token ids with right padding of varied length, a class."""
    import datasets

    if family == "llama":
        dataset = cases.make_dataset("llama", samples, seed)
    else:
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(1, cases.VOCAB, (samples, cases.SEQ), generator=gen)
        lengths = torch.randint(3, cases.SEQ + 1, (samples,), generator=gen)
        mask = (torch.arange(cases.SEQ)[None, :] < lengths[:, None]).long()
        dataset = datasets.Dataset.from_dict(
            {
                "input_ids": (ids * mask).tolist(),
                "attention_mask": mask.tolist(),
                "labels": torch.randint(0, NUM_LABELS, (samples,), generator=gen).tolist(),
            }
        )
    return dataset if labels else dataset.remove_columns("labels")


class Stream(IterableDataset):
    """An unsized iterable over a dataset's rows (what a user's generator-backed dataset looks like)."""

    def __init__(self, dataset) -> None:
        self.rows = [dataset[i] for i in range(len(dataset))]

    def __iter__(self):
        yield from self.rows


def compute_metrics(prediction) -> dict[str, float]:
    """Accuracy (next-token accuracy for the LM) and the mean logit (sensitive to every predicted value)."""
    logits = np.asarray(prediction.predictions, dtype=np.float64)
    labels = np.asarray(prediction.label_ids)
    if labels.ndim == 2:  # causal LM: position t predicts label t + 1
        logits, labels = logits[:, :-1], labels[:, 1:]
    counted = labels != -100
    accuracy = (logits.argmax(-1) == labels)[counted].mean()
    return {"accuracy": float(accuracy), "mean_logit": float(logits.mean()), "rows": float(len(logits))}


def mixed_plan(world: int = 4):
    """Per-layer TP [1, 2, 2, 1] (zero3 / ddp / zero2 / zero3), vocabulary TP 2 with ZeRO-3: layout changes."""
    from galvatron_hf.planner.plan import LayerStrategy, Plan, VocabStrategy

    blocks = [(1, "zero3"), (2, "ddp"), (2, "zero2"), (1, "zero3")]
    return Plan(
        world_size=world,
        pp=1,
        schedule="gpipe",
        global_batch_size=cases.GLOBAL_BATCH,
        num_micro_batches=1,
        layers=[LayerStrategy(0, tp, world // tp, dp_type, False) for tp, dp_type in blocks],
        vocab=VocabStrategy(2, world // 2, "zero3"),
        mixed_precision="fp32",
    )


LAYOUTS: dict[str, dict[str, Any]] = {
    "zero3x4": {"flags": {"dp_type": "zero3"}, "data_size": 4},
    # accumulation 2: the plan runs 2 micro-batches per step (training and evaluation batches are cut in two)
    "tp2_zero3x2": {"flags": {"tp": 2, "dp_type": "zero3", "gradient_accumulation_steps": 2}, "data_size": 2},
    "mixed_tp": {"plan": "mixed", "data_size": 2},
    # PP2 x DDP2: logits sent from the last stage; 2 samples per group split into 2 micro-batches, 1 in the last
    "pp2_ddp2": {"flags": {"pp": 2, "dp_type": "ddp", "num_micro_batches": 2}, "data_size": 2},
}


def _arguments(output_dir: str, galvatron: bool, **overrides: Any):
    from transformers import TrainingArguments

    from galvatron_hf.trainer import GalvatronTrainingArguments

    values = cases.common_arguments(output_dir, **overrides)
    return GalvatronTrainingArguments(**values) if galvatron else TrainingArguments(**values)


# ----- what each side reports ---------------------------------------------------------------------------------


def evaluation_report(trainer, family: str) -> dict[str, Any]:
    """evaluate() with metrics, predict() with labels, predict() without labels and on an unsized iterable."""
    metrics = trainer.evaluate()
    labelled = trainer.predict(make_dataset(family, EVAL_SAMPLES, seed=3))
    unlabelled = trainer.predict(make_dataset(family, EVAL_SAMPLES, seed=3, labels=False))
    streamed = trainer.predict(Stream(make_dataset(family, EVAL_SAMPLES, seed=3)))
    keep = ("loss", "accuracy", "mean_logit", "rows")
    return {
        "metrics": {k: v for k, v in metrics.items() if k.partition("_")[2] in keep},
        "test_metrics": {k: v for k, v in labelled.metrics.items() if k.partition("_")[2] in keep},
        "predictions": labelled.predictions,
        "label_ids": labelled.label_ids,
        "unlabelled": unlabelled.predictions,
        "unlabelled_label_ids": unlabelled.label_ids,
        "streamed": streamed.predictions,
        "streamed_label_ids": streamed.label_ids,
        "streamed_metrics": {k: v for k, v in streamed.metrics.items() if k.partition("_")[2] in keep},
    }


def reference_evaluation(family: str, output_dir: str, eval_batch: int) -> dict[str, Any]:
    """The plain Trainer, one process, ``eval_batch`` samples per step (a Galvatron step's samples)."""
    from transformers import Trainer

    args = _arguments(output_dir, galvatron=False, per_device_eval_batch_size=eval_batch)
    trainer = Trainer(
        make_model(family),
        args,
        eval_dataset=make_dataset(family, EVAL_SAMPLES, seed=2),
        data_collator=cases.collate,
        compute_metrics=compute_metrics,
    )
    return evaluation_report(trainer, family)


def reference_iterable_training(output_dir: str) -> list[float]:
    from transformers import Trainer

    args = _arguments(output_dir, galvatron=False, per_device_train_batch_size=cases.GLOBAL_BATCH)
    trainer = Trainer(
        cases.make_model("llama"),
        args,
        train_dataset=Stream(cases.make_dataset("llama")),
        data_collator=cases.collate,
    )
    trainer.train()
    return cases.logged_losses(trainer.state.log_history)


# ----- the distributed worker ---------------------------------------------------------------------------------


def _galvatron_trainer(family: str, layout: dict[str, Any], output_dir: str, **kwargs: Any):
    from galvatron_hf.trainer import GalvatronTrainer

    args = _arguments(
        output_dir,
        galvatron=True,
        per_device_eval_batch_size=EVAL_BATCH,
        **({} if "plan" in layout else {"global_batch_size": cases.GLOBAL_BATCH}),
        **layout.get("flags", {}),
        **kwargs.pop("overrides", {}),
    )
    plan = mixed_plan() if layout.get("plan") == "mixed" else None
    return GalvatronTrainer(make_model(family), args, plan=plan, data_collator=cases.collate, **kwargs)


class RecordSchedule(TrainerCallback):
    """Records, per step, the learning rate the step uses and whether fp16 skipped it; forces an overflow in
    ``SKIPPED_STEP`` (a huge loss scale) and puts a moderate scale back for the other steps."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.rates: list[float] = []
        self.skipped: list[bool] = []

    def on_step_begin(self, args, state, control, **kwargs):
        scaler = self.trainer.parallel_model.scaler
        scaler.scale = 2.0**100 if state.global_step + 1 == SKIPPED_STEP else 2.0**8
        self.rates.append(self.trainer.optimizer.param_groups[0]["lr"])

    def on_step_end(self, args, state, control, **kwargs):
        self.skipped.append(self.trainer.last_step_skipped)


def _fp16_run(workdir: str) -> dict[str, Any]:
    trainer = _galvatron_trainer(
        "llama",
        LAYOUTS["tp2_zero3x2"],
        os.path.join(workdir, "fp16"),
        train_dataset=cases.make_dataset("llama"),
        overrides={"fp16": True},
    )
    recorder = RecordSchedule(trainer)
    trainer.add_callback(recorder)
    trainer.train()
    return {
        "rates": recorder.rates,
        "skipped": recorder.skipped,
        "scheduler_steps": trainer.lr_scheduler.last_epoch,
        "losses": cases.logged_losses(trainer.state.log_history),
    }


def evaluation_worker(rank: int, world_size: int, runs: list[dict[str, Any]], workdir: str) -> list[Any]:
    """Each run: ``kind`` "evaluate" (family, layout), "iterable" (train from a Stream) or "fp16"."""
    results = []
    for index, run in enumerate(runs):
        output_dir = os.path.join(workdir, f"run{index}")
        if run["kind"] == "evaluate":
            trainer = _galvatron_trainer(
                run["family"],
                LAYOUTS[run["layout"]],
                output_dir,
                eval_dataset=make_dataset(run["family"], EVAL_SAMPLES, seed=2),
                compute_metrics=compute_metrics,
            )
            results.append(evaluation_report(trainer, run["family"]))
        elif run["kind"] == "iterable":
            trainer = _galvatron_trainer(
                "llama", LAYOUTS[run["layout"]], output_dir, train_dataset=Stream(cases.make_dataset("llama"))
            )
            trainer.train()
            results.append({"losses": cases.logged_losses(trainer.state.log_history)})
        else:
            results.append(_fp16_run(workdir))
    return results

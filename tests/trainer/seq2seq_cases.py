"""Cases of the Seq2Seq trainer test: a tiny T5 learning to reverse its input, trained a few steps and then
evaluated with ``predict_with_generate``; the single-process plain ``Seq2SeqTrainer`` reference and the per-rank
worker. Imported by the test module and, through ``run_distributed``'s spawn, by every rank.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import trainer_cases as cases

EVAL_SAMPLES = 8  # evaluate(): whole steps on 1 and 2 data-parallel groups of 2 samples
TEST_SAMPLES = 7  # predict(): the last step is uneven, its fillers dropped
EVAL_BATCH = 2
TARGET = 6  # label tokens per sample (the generation length is TARGET + 2: start token and EOS)
STEPS = 2

LAYOUTS: dict[str, dict[str, Any]] = {  # "unlabelled": also predict() without labels (one layout with fillers)
    "ddp": {"flags": {"dp_type": "ddp"}, "data_size": 2, "unlabelled": True},
    "zero2": {"flags": {"dp_type": "zero2"}, "data_size": 2},
    "zero3_beams": {"flags": {"dp_type": "zero3", "generation_num_beams": 2}, "data_size": 2},
    "tp2": {"flags": {"tp": 2}, "data_size": 1},
}
PIPELINE = {"flags": {"pp": 2, "num_micro_batches": 2}, "data_size": 1}


def make_pairs(samples: int, seed: int, labels: bool = True):
    """Source ids and, as the target, the source's first ``TARGET`` tokens reversed then EOS (id 1)."""
    import datasets

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, cases.VOCAB, (samples, cases.SEQ), generator=gen)
    target = torch.cat([ids[:, :TARGET].flip(1), torch.ones(samples, 1, dtype=torch.long)], dim=1)
    columns = {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()}
    if labels:
        columns["labels"] = target.tolist()
    return datasets.Dataset.from_dict(columns)


def compute_metrics(prediction) -> dict[str, float]:
    """Token accuracy of the generated ids (after the start token) against the labels, and their checksum."""
    generated = np.asarray(prediction.predictions)
    labels = np.asarray(prediction.label_ids)
    width = min(generated.shape[1] - 1, labels.shape[1])
    guess, truth = generated[:, 1 : width + 1], labels[:, :width]
    counted = truth > 0  # not -100 (padding between batches) nor 0 (padding to the generation length)
    return {
        "token_accuracy": float((guess == truth)[counted].mean()),
        "id_sum": float(generated.sum()),
        "rows": float(len(generated)),
    }


def arguments(output_dir: str, galvatron: bool, **overrides: Any):
    from transformers import Seq2SeqTrainingArguments

    from galvatron_hf import GalvatronSeq2SeqTrainingArguments

    values = cases.common_arguments(
        output_dir,
        max_steps=STEPS,
        predict_with_generate=True,
        generation_max_length=TARGET + 2,
        learning_rate=1e-3,
    )
    values.update(overrides)
    return GalvatronSeq2SeqTrainingArguments(**values) if galvatron else Seq2SeqTrainingArguments(**values)


def report(trainer, unlabelled: bool) -> dict[str, Any]:
    """Train, evaluate with generation, predict with labels (and, if ``unlabelled``, without)."""
    trainer.train()
    metrics = trainer.evaluate()
    labelled = trainer.predict(make_pairs(TEST_SAMPLES, seed=3))
    keep = ("loss", "token_accuracy", "id_sum", "rows")
    result = {
        "losses": cases.logged_losses(trainer.state.log_history),
        "metrics": {k: v for k, v in metrics.items() if k.partition("_")[2] in keep},
        "test_metrics": {k: v for k, v in labelled.metrics.items() if k.partition("_")[2] in keep},
        "predictions": labelled.predictions,
        "label_ids": labelled.label_ids,
    }
    if unlabelled:
        result["unlabelled"] = trainer.predict(make_pairs(TEST_SAMPLES, seed=3, labels=False)).predictions
    return result


def reference(output_dir: str, data_size: int, num_beams: int | None) -> dict[str, Any]:
    """The plain Seq2SeqTrainer, one process: the global batch per step, a Galvatron step's samples per eval step.

    With one data-parallel group it also reports the eval loss of the pipeline run's evaluation set."""
    from transformers import Seq2SeqTrainer

    args = arguments(
        output_dir,
        galvatron=False,
        per_device_train_batch_size=cases.GLOBAL_BATCH,
        per_device_eval_batch_size=EVAL_BATCH * data_size,
        generation_num_beams=num_beams,
    )
    trainer = Seq2SeqTrainer(
        cases.make_model("t5"),
        args,
        train_dataset=make_pairs(cases.SAMPLES, seed=1),
        eval_dataset=make_pairs(EVAL_SAMPLES, seed=2),
        data_collator=cases.collate,
        compute_metrics=compute_metrics,
    )
    result = report(trainer, unlabelled=True)
    if data_size == 1:
        result["pipeline_eval_loss"] = trainer.evaluate(pipeline_evaluation_set())["eval_loss"]
    return result


def pipeline_evaluation_set():
    return make_pairs(2 * EVAL_BATCH, seed=2)  # pipeline steps need whole micro-batches


def galvatron_trainer(layout: dict[str, Any], output_dir: str):
    from galvatron_hf import GalvatronSeq2SeqTrainer

    args = arguments(
        output_dir,
        galvatron=True,
        global_batch_size=cases.GLOBAL_BATCH,
        per_device_eval_batch_size=EVAL_BATCH,
        **layout["flags"],
    )
    return GalvatronSeq2SeqTrainer(
        cases.make_model("t5"),
        args,
        train_dataset=make_pairs(cases.SAMPLES, seed=1),
        eval_dataset=make_pairs(EVAL_SAMPLES, seed=2),
        data_collator=cases.collate,
        compute_metrics=compute_metrics,
    )


def pipeline_report(output_dir: str) -> dict[str, Any]:
    """pp = 2: trains; evaluate() without compute_metrics gives eval_loss; generation is refused with the fix."""
    from galvatron_hf.parallel.generation import GenerationError

    trainer = galvatron_trainer(PIPELINE, output_dir)
    trainer.compute_metrics = None
    trainer.train()
    evaluation = pipeline_evaluation_set()
    result = {
        "losses": cases.logged_losses(trainer.state.log_history),
        "eval_loss": trainer.evaluate(evaluation)["eval_loss"],
    }
    trainer.compute_metrics = compute_metrics
    errors = []
    prompt = torch.ones(2, 4, dtype=torch.long)
    for call in (lambda: trainer.evaluate(evaluation), lambda: trainer.model.generate(input_ids=prompt)):
        try:
            call()
            errors.append(None)
        except GenerationError as error:
            errors.append(str(error))
    result["errors"] = errors
    return result


def worker(rank: int, world_size: int, layouts: list[str], workdir: str) -> dict[str, Any]:
    results = {}
    for name in layouts:
        trainer = galvatron_trainer(LAYOUTS[name], os.path.join(workdir, name))
        results[name] = report(trainer, unlabelled=LAYOUTS[name].get("unlabelled", False))
    results["pipeline"] = pipeline_report(os.path.join(workdir, "pipeline"))
    return results

"""Training scripts written the way Hugging Face's example scripts are, run with GalvatronTrainer and with the
plain Trainer: ``HfArgumentParser`` over the script's own dataclass and the training arguments, the Trainer's
default ``remove_unused_columns=True`` (the datasets carry extra columns it must drop), HF's collators
(``DataCollatorForLanguageModeling``, ``DataCollatorWithPadding``, ``DataCollatorForSeq2Seq``), datasets whose
sizes are not multiples of the batch, then ``train`` -> ``evaluate`` -> ``predict`` -> ``save_model``, and a
second run resumed from a checkpoint.

The only difference between the two sides is the swap the README asks for: ``GalvatronTrainer`` /
``GalvatronTrainingArguments`` for ``Trainer`` / ``TrainingArguments`` (``GalvatronSeq2SeqTrainer`` /
``GalvatronSeq2SeqTrainingArguments`` for the Seq2Seq ones, as run_translation uses). Imported by the test module and, through
``run_distributed``'s spawn, by every rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

WORDS = 40
TRAIN_SAMPLES = 22  # global batch 8: two full steps and a last one of 6 samples
EVAL_SAMPLES = 7
GLOBAL_BATCH = 8  # splits over 4 data-parallel groups x 2 accumulation steps
EVAL_BATCH = 2  # per data-parallel group
SAVE_STEPS = 2
NUM_LABELS = 3
TASKS = ("causal_lm", "masked_lm", "seq_cls", "seq2seq", "image_cls")

LAYOUTS: dict[str, list[str]] = {
    "plain": [],
    "zero3_accum2": ["--dp_type", "zero3", "--gradient_accumulation_steps", "2"],
    "tp2_zero3": ["--tp", "2", "--dp_type", "zero3"],
    "pp2_gpipe": ["--pp", "2", "--schedule", "gpipe", "--num_micro_batches", "2"],
    "pp2_1f1b": ["--pp", "2", "--schedule", "1f1b", "--num_micro_batches", "2"],
    "auto": ["--auto_parallel"],
}


@dataclass
class ScriptArguments:
    """The script's own options, parsed with the training arguments as the HF examples do."""

    task: str = field(default="causal_lm", metadata={"help": f"one of {TASKS}"})
    max_seq_length: int = field(default=12)


def tokenizer():
    """A word-level tokenizer built in memory (nothing is downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate(specials + [f"w{i}" for i in range(WORDS)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def model_for(task: str, seed: int = 0):
    import transformers as tf

    torch.manual_seed(seed)
    vocab = len(tokenizer())
    if task == "causal_lm":
        config = tf.LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False, pad_token_id=0,
        )
        return tf.LlamaForCausalLM(config)
    if task == "seq2seq":
        config = tf.T5Config(
            vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4,
            dropout_rate=0.0, relative_attention_num_buckets=8, relative_attention_max_distance=16,
            decoder_start_token_id=0, pad_token_id=0,
        )
        return tf.T5ForConditionalGeneration(config)
    if task == "image_cls":
        config = tf.ViTConfig(
            image_size=8, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=NUM_LABELS,
        )
        return tf.ViTForImageClassification(config)
    config = tf.BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        num_labels=NUM_LABELS, pad_token_id=0,
    )
    head = tf.BertForMaskedLM if task == "masked_lm" else tf.BertForSequenceClassification
    return head(config)


def raw_texts(samples: int, seed: int):
    """Sentences of 3..10 words with a class label and the columns a real dataset has (idx, a string)."""
    import datasets

    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 11, (samples,), generator=gen).tolist()
    sentences = [" ".join(f"w{int(w)}" for w in torch.randint(0, WORDS, (n,), generator=gen)) for n in lengths]
    labels = torch.randint(0, NUM_LABELS, (samples,), generator=gen).tolist()
    return datasets.Dataset.from_dict({"sentence": sentences, "label": labels, "idx": list(range(samples))})


def images(samples: int, seed: int):
    import datasets

    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(samples, 3, 8, 8, generator=gen)
    labels = torch.randint(0, NUM_LABELS, (samples,), generator=gen).tolist()
    return datasets.Dataset.from_dict({"pixel_values": pixels.tolist(), "label": labels, "image_id": list(range(samples))})


def dataset_for(task: str, samples: int, seed: int, max_length: int):
    if task == "image_cls":
        return images(samples, seed)
    tok = tokenizer()
    raw = raw_texts(samples, seed)
    if task == "seq2seq":  # run_translation's preprocessing: the target is the source's words reversed
        def translate(batch):
            targets = [" ".join(reversed(sentence.split()[:6])) for sentence in batch["sentence"]]
            inputs = tok(batch["sentence"], truncation=True, max_length=max_length)
            inputs["labels"] = tok(text_target=targets, truncation=True, max_length=max_length)["input_ids"]
            return inputs

        return raw.map(translate, batched=True).remove_columns(["label"])
    tokenized = raw.map(lambda batch: tok(batch["sentence"], truncation=True, max_length=max_length), batched=True)
    if task != "seq_cls":  # language modelling: the label column goes, as run_clm / run_mlm drop the raw columns
        tokenized = tokenized.remove_columns(["label"])
    return tokenized


def collate_images(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """run_image_classification's collate_fn."""
    pixel_values = torch.stack([torch.tensor(example["pixel_values"]) for example in examples])
    labels = torch.tensor([example["label"] for example in examples])
    return {"pixel_values": pixel_values, "labels": labels}


def collator_for(task: str, model):
    from transformers import DataCollatorForLanguageModeling, DataCollatorForSeq2Seq, DataCollatorWithPadding

    if task == "seq2seq":  # labels padded with -100, decoder_input_ids made by the model from them
        return DataCollatorForSeq2Seq(tokenizer(), model=model)
    if task == "image_cls":
        return collate_images
    if task == "causal_lm":
        return DataCollatorForLanguageModeling(tokenizer(), mlm=False)
    if task == "masked_lm":  # every token masked: the same inputs whichever process collates a sample
        return DataCollatorForLanguageModeling(
            tokenizer(), mlm_probability=1.0, mask_replace_prob=1.0, random_replace_prob=0.0
        )
    return DataCollatorWithPadding(tokenizer())


def common_flags(output_dir: str) -> list[str]:
    return [
        "--output_dir", output_dir, "--num_train_epochs", "1", "--learning_rate", "5e-3", "--logging_steps", "1",
        "--report_to", "none", "--seed", "0", "--disable_tqdm", "true", "--use_cpu", "true",
        "--per_device_eval_batch_size", str(EVAL_BATCH), "--save_strategy", "steps", "--save_steps",
        str(SAVE_STEPS), "--lr_scheduler_type", "linear", "--warmup_steps", "1",
    ]


def main(argv: list[str], galvatron: bool = True, data_sizes: tuple[int, ...] = ()) -> dict[str, Any]:
    """The script: what it reports is what the tests compare (``data_sizes``: the plain Trainer's evaluation
    repeated with ``EVAL_BATCH`` x each of them per step)."""
    from transformers import HfArgumentParser

    task = HfArgumentParser(ScriptArguments).parse_args_into_dataclasses(argv, return_remaining_strings=True)[0].task
    trainer_class, arguments_class = trainer_classes(task, galvatron)
    script, training_args = HfArgumentParser((ScriptArguments, arguments_class)).parse_args_into_dataclasses(argv)
    resume = training_args.resume_from_checkpoint
    model = model_for(script.task)
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=dataset_for(script.task, TRAIN_SAMPLES, 1, script.max_seq_length),
        eval_dataset=dataset_for(script.task, EVAL_SAMPLES, 2, script.max_seq_length),
        data_collator=collator_for(script.task, model),
    )
    trainer.train(resume_from_checkpoint=resume)
    report: dict[str, Any] = {"losses": [e["loss"] for e in trainer.state.log_history if "loss" in e]}
    if not galvatron:  # a token loss's mean depends on the samples per step: one report per step size a layout has
        report["by_data_size"] = {}
        for data_size in data_sizes:
            trainer.args.per_device_eval_batch_size = EVAL_BATCH * data_size
            report["by_data_size"][data_size] = evaluate_and_predict(trainer, script)
        return report
    if resume is None:
        report.update(evaluate_and_predict(trainer, script))
        trainer.save_model(os.path.join(training_args.output_dir, "final"))
    report["plan"] = trainer.plan
    report["data_size"] = trainer.parallel_model.data_size
    return report


def trainer_classes(task: str, galvatron: bool) -> tuple[type, type]:
    """The script's Trainer and its arguments: the Seq2Seq pair for translation, as run_translation uses."""
    import galvatron_hf as g
    import transformers as tf

    if task == "seq2seq":
        if galvatron:
            return g.GalvatronSeq2SeqTrainer, g.GalvatronSeq2SeqTrainingArguments
        return tf.Seq2SeqTrainer, tf.Seq2SeqTrainingArguments
    return (g.GalvatronTrainer, g.GalvatronTrainingArguments) if galvatron else (tf.Trainer, tf.TrainingArguments)


def evaluate_and_predict(trainer, script: ScriptArguments) -> dict[str, Any]:
    from transformers import Seq2SeqTrainer, Trainer

    from galvatron_hf import GalvatronTrainer

    evaluate, predict = trainer.evaluate, trainer.predict
    if isinstance(trainer, Seq2SeqTrainer) and not isinstance(trainer, GalvatronTrainer):
        # the plain Seq2SeqTrainer's evaluate / predict gather step losses with accelerator.gather: a short last
        # step counts as a whole one (its fillers too, on several processes). The Trainer's own loop, which
        # GalvatronSeq2SeqTrainer keeps, weights each step by its real samples.
        evaluate, predict = partial(Trainer.evaluate, trainer), partial(Trainer.predict, trainer)
    evaluated = evaluate()
    predicted = predict(dataset_for(script.task, EVAL_SAMPLES, 3, script.max_seq_length))
    return {"eval_loss": evaluated["eval_loss"], "test_loss": predicted.metrics["test_loss"],
            "predictions": predicted.predictions}


def script_argv(task: str, layout: str, output_dir: str, resume: bool = False) -> list[str]:
    argv = ["--task", task, *common_flags(output_dir), "--global_batch_size", str(GLOBAL_BATCH), *LAYOUTS[layout]]
    if resume:
        argv += ["--resume_from_checkpoint", os.path.join(output_dir, f"checkpoint-{SAVE_STEPS}")]
    return argv


def reference(task: str, workdir: str, data_sizes: tuple[int, ...]) -> dict[str, Any]:
    """The plain Trainer on one process, the whole global batch per step, evaluated as ``data_sizes`` groups
    (nothing saved: only the runs it is compared with save and resume)."""
    out = os.path.join(workdir, f"reference_{task}")
    argv = ["--task", task, *common_flags(out), "--per_device_train_batch_size", str(GLOBAL_BATCH),
            "--save_strategy", "no"]
    return main(argv, galvatron=False, data_sizes=data_sizes)


def worker(rank: int, world_size: int, runs: list[tuple[str, str]], workdir: str) -> dict[str, Any]:
    """Every (task, layout) run of one launch, in order: a full run, then one resumed from its checkpoint."""
    results: dict[str, Any] = {}
    for task, layout in runs:
        out = os.path.join(workdir, f"{task}_{layout}_{world_size}")
        full = main(script_argv(task, layout, out))
        resumed = main(script_argv(task, layout, out, resume=True))
        results[f"{task}/{layout}"] = {**full, "resumed_losses": resumed["losses"]}
    if world_size == 2:  # last: the check leaves a collective of its own group unfinished
        results["errors_shared"] = error_seen_by(rank)
    return results


def error_seen_by(rank: int) -> str:
    """Rank 1 fails while rank 0 waits for it in a collective: both report rank 1's error."""
    import datetime

    import torch.distributed as dist

    from galvatron_hf.training.launch import PeerRankError, errors_shared_across_ranks

    group = dist.new_group(backend="gloo")  # the collective left unfinished breaks this group only
    try:
        with errors_shared_across_ranks(wait_s=30):
            if rank == 1:
                raise ValueError("a failure on rank 1 only")
            dist.monitored_barrier(group, timeout=datetime.timedelta(seconds=2))  # rank 1 never arrives
    except PeerRankError as shared:
        return str(shared)
    except ValueError as own:
        return f"rank {rank}: ValueError: {own}"
    return "no error"

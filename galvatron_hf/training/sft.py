"""``GalvatronSFTTrainer``: TRL's ``SFTTrainer`` running a galvatron plan (``pip install galvatron-hf[trl]``).

Swap two names in a TRL script::

    args = GalvatronSFTConfig(output_dir="out", max_length=1024, completion_only_loss=True, auto_parallel=True)
    trainer = GalvatronSFTTrainer(model, args, train_dataset=dataset, processing_class=tokenizer)

TRL's dataset preparation (formatting, chat templates, tokenizing, completion-only and assistant-only labels,
packing) runs as in ``SFTTrainer``: it builds the ``labels`` the runtime's loss reads, which is TRL's ``nll``
loss (the mean over the step's label tokens). The step runs through the runtime, not through
``SFTTrainer.compute_loss``, so TRL's logged metrics are measured here from the same forward
(:class:`TokenStats`): ``entropy`` and ``mean_token_accuracy`` of each loader batch (each micro-batch of TRL's
gradient accumulation) over every data-parallel group (with pp > 1 on the last stage, where the logits are),
averaged by ``SFTTrainer.log``, and ``num_tokens`` seen so far. The plan is priced for ``max_length`` tokens when
``seq_len`` is not given; with pp > 1 batches are padded to ``max_length`` (pipeline stages exchange fixed
shapes). Padding-free batches (``packing``, ``padding_free``) need pp = 1 and at most one micro-batch per loader
batch; evaluation collates them one row per sample (:class:`SampleRows`).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers.trainer_pt_utils import find_batch_size
from trl import SFTConfig, SFTTrainer

from galvatron_hf.constants import IGNORE_INDEX
from galvatron_hf.parallel.parallel_dims import Layout
from galvatron_hf.trainer import GalvatronTrainer
from galvatron_hf.training.arguments import GalvatronTrainingArguments
from galvatron_hf.training.batching import merge_micro_batches, round_in_epoch


class SFTSettingError(ValueError):
    """An SFTTrainer setting the runtime cannot honour; the message names the fix."""


def _as_trl_declares(name: str) -> Any:
    """``SFTConfig``'s own declaration of the field ``name`` (its default and help)."""
    declared = SFTConfig.__dataclass_fields__[name]
    return field(default=declared.default, metadata=declared.metadata)


@dataclass
class GalvatronSFTConfig(GalvatronTrainingArguments, SFTConfig):
    """SFTConfig plus the plan options; every inherited field keeps its TRL meaning and TRL's default.

    ``GalvatronTrainingArguments`` carries every ``TrainingArguments`` field, and a dataclass takes a field's
    default from the last base declaring it, so the fields TRL re-declares with its own defaults are declared
    again here: ``bf16`` on unless ``fp16`` (the plain ``SFTTrainer`` trains under bf16 autocast by default,
    on CPU too; here that is the plan's bf16 mixed precision), learning rate 2e-5, a log every 10 steps.
    ``gradient_checkpointing`` is the exception: activation checkpointing is the plan's (the search's choice
    per block, or ``checkpoint=True``), so TRL's default of True is not taken.
    """

    learning_rate: float = _as_trl_declares("learning_rate")
    logging_steps: float = _as_trl_declares("logging_steps")
    bf16: bool | None = _as_trl_declares("bf16")
    lr_scheduler_kwargs: dict | str | None = _as_trl_declares("lr_scheduler_kwargs")
    use_liger_kernel: bool = _as_trl_declares("use_liger_kernel")


class TokenStats:
    """Entropy, top-1 hits and label tokens of each loader batch of a step, from the logits the model returns.

    ``SFTTrainer.compute_loss`` appends one entropy / accuracy value per loader batch (per micro-batch of its
    gradient accumulation, over every process) and ``SFTTrainer.log`` averages them. Here a step's loader
    batches are merged and cut into the plan's micro-batches, so the sums are kept per row (:meth:`add`) and
    grouped back into the step's loader batches in :meth:`reduce` (rows keep their order through the merge,
    the micro-batches and the pipeline schedule).

    pp = 1: a forward hook on the model reads ``labels`` and ``logits``. pp > 1: the last stage's loss task is
    wrapped, which sees each micro-batch's logits and labels.
    """

    def __init__(self, parallel_model: Any) -> None:
        self.parallel_model = parallel_model
        self.forwards: list[torch.Tensor] = []  # per forward, per row: entropy sum, top-1 hits, label tokens
        self.batch_rows: list[int] = []  # rows of each loader batch since the last reduce
        self.tokens = 0.0  # attention tokens of the step's loader batches
        pipeline = parallel_model.pipeline
        if pipeline is None:
            parallel_model.module.register_forward_hook(self._from_forward, with_kwargs=True)
        elif parallel_model.stage_layout.is_last:
            pipeline.task = _RecordingTask(pipeline.task, self)

    def _from_forward(self, module, args, kwargs, output) -> None:
        labels, logits = kwargs.get("labels"), getattr(output, "logits", None)
        if labels is None:
            return
        if logits is None:
            raise SFTSettingError(
                "the model returned no logits (a fused or chunked loss head), so entropy and mean_token_accuracy "
                "cannot be measured: turn the fused head off (use_liger_kernel=False)"
            )
        self.add(logits, labels)

    @torch.no_grad()
    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one forward's label tokens, per row (position t predicts label t + 1, as TRL's loss shifts them)."""
        logits, labels = logits[:, :-1].float(), labels[:, 1:].to(logits.device)
        mask = labels != IGNORE_INDEX
        log_probs = torch.log_softmax(logits, dim=-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        correct = logits.argmax(-1) == labels
        sums = [torch.where(mask, entropy, 0.0).double().sum(-1), (correct & mask).sum(-1), mask.sum(-1)]
        self.forwards.append(torch.stack([value.double().cpu() for value in sums], dim=-1))

    def add_batch(self, batch: dict[str, Any], count_tokens: bool) -> None:
        """A loader batch of the coming step: its rows, and (training) TRL's ``num_tokens``: attention-mask
        tokens, or the packed length of a padding-free batch."""
        self.batch_rows.append(find_batch_size(batch) or 0)
        if not count_tokens:
            return
        if batch.get("attention_mask") is not None:
            self.tokens += float(batch["attention_mask"].sum())
        elif batch.get("position_ids") is not None:
            self.tokens += float(batch["position_ids"].shape[-1])

    def reduce(self) -> tuple[list[tuple[float, float]], float]:
        """((entropy, accuracy) of each loader batch, tokens) of everything added since the last call, over all
        ranks (each sample counted once: the last stage's ranks of TP rank 0 in the data-loading layout
        contribute); then starts again. Every rank has the same number of loader batches per step."""
        pm = self.parallel_model
        per_batch = torch.zeros(len(self.batch_rows), 3, dtype=torch.float64)
        if self._counts_here() and self.forwards:
            # a pipeline schedule's first step also runs its loss on shape-inference placeholders before the
            # micro-batches, and pads the last micro-batches with label-free rows: the step's rows come first
            rows = torch.cat(self.forwards[-pm.plan.num_micro_batches :])
            for index, part in enumerate(rows[: sum(self.batch_rows)].split(self.batch_rows)):
                per_batch[index] = part.sum(0)
        tokens = self.tokens if self._counts_here() else 0.0
        counts = torch.cat([per_batch.flatten(), torch.tensor([tokens], dtype=torch.float64)])
        self.forwards, self.batch_rows, self.tokens = [], [], 0.0
        counts = counts.to(pm.device)
        dist.all_reduce(counts)
        counts = counts.cpu()
        values = [
            ((entropy / valid, correct / valid) if valid else (0.0, 0.0))
            for entropy, correct, valid in counts[:-1].view(-1, 3).tolist()
        ]
        return values, float(counts[-1])

    def _counts_here(self) -> bool:
        pm = self.parallel_model
        last_stage = pm.pipeline is None or pm.stage_layout.is_last
        return last_stage and pm.dims.tp_rank(Layout.of(pm.plan.vocab)) == 0


class _RecordingTask:
    """A pipeline loss task that also adds each micro-batch's logits and labels to :class:`TokenStats`."""

    def __init__(self, task: Any, stats: TokenStats) -> None:
        self.task, self.stats = task, stats

    def loss_sum(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.stats.add(output.detach(), labels)
        return self.task.loss_sum(output, labels)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)


class GalvatronSFTTrainer(GalvatronTrainer, SFTTrainer):
    """``SFTTrainer`` on a parallelised model. ``SFTTrainer.__init__`` prepares the datasets; the step and the
    evaluation are ``GalvatronTrainer``'s, and ``training_step`` / ``prediction_step`` add TRL's metrics to
    ``self._metrics`` as ``SFTTrainer.compute_loss`` does (``SFTTrainer.log`` averages and logs them)."""

    def __init__(self, model: nn.Module | None = None, args: SFTConfig | None = None, *a: Any, **kw: Any) -> None:
        args = args if args is not None else GalvatronSFTConfig(output_dir="trainer_output")
        check_sft_settings(model, args, kw)
        if getattr(args, "seq_len", None) is None and args.max_length:
            args = copy.copy(args)
            args.seq_len = args.max_length  # plan for TRL's sequence length (the raw dataset has no token ids)
        super().__init__(model, args, *a, **kw)
        check_padding_free(self.padding_free, self.plan, self.batch_geometry)
        self.eval_collator = evaluation_collator(self.data_collator, self.padding_free)
        if self.plan.pp > 1:
            pad_for_pipeline(self.data_collator, self.args.max_length)
        self.token_stats = TokenStats(self.parallel_model)

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        if self.padding_free:
            self._check_no_filler_samples()
            if self.batch_geometry.gradient_accumulation_steps > 1:
                inputs = without_varlen_boundaries(inputs)
        self.token_stats.add_batch(inputs, count_tokens=True)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not self._pending:  # the step ran
            self._record("train")
        return loss

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys=None):
        self.token_stats.add_batch(inputs, count_tokens=False)
        output = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        self._record("eval")
        return output

    def _evaluation_loader(self, dataset: Any, description: str):
        """Evaluation batches from :func:`evaluation_collator` (the training collator otherwise)."""
        train_collator, self.data_collator = self.data_collator, self.eval_collator
        try:
            return super()._evaluation_loader(dataset, description)
        finally:
            self.data_collator = train_collator

    def _record(self, mode: str) -> None:
        """TRL's metrics of the loader batches since the last call: one entropy / accuracy value per loader
        batch (``SFTTrainer.log`` averages them over the logging interval), the running token count."""
        values, tokens = self.token_stats.reduce()
        for entropy, accuracy in values:
            self._metrics[mode]["entropy"].append(entropy)
            self._metrics[mode]["mean_token_accuracy"].append(accuracy)
        if mode == "train":
            self._total_train_tokens += tokens
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def _check_no_filler_samples(self) -> None:
        """The loader batch about to be collected must not mix real and filler samples in its padding-free row
        (fillers are left out of the loss by rows). The same answer on every rank: it depends only on the
        dataset size and the step, so every rank raises before the step's collectives."""
        fillers, batches = getattr(self, "_train_fillers", None), getattr(self, "_train_loader_batches", None)
        if fillers is None or batches is None or fillers.data_size == 1 or fillers.dataset_size is None:
            return
        accumulation = self.batch_geometry.gradient_accumulation_steps
        index = round_in_epoch(self.state.global_step, len(self._pending), batches, accumulation)
        left = fillers.dataset_size - index * fillers.data_size * fillers.per_rank_batch_size
        if 0 < left < fillers.data_size * fillers.per_rank_batch_size and left % fillers.per_rank_batch_size:
            raise SFTSettingError(
                f"the epoch's last loader batches hold {left} samples over {fillers.data_size} data-parallel groups "
                f"of {fillers.per_rank_batch_size}: one group's padding-free row would mix real and filler samples, "
                "which cannot be left out of the loss; set dataloader_drop_last=True, or a dataset size that is a "
                f"multiple of {fillers.per_rank_batch_size}"
            )


def without_varlen_boundaries(batch: dict[str, Any]) -> dict[str, Any]:
    """A padding-free loader batch without its sequence-boundary tensors (``cu_seq_lens_*``, ``max_length_*``,
    ``seq_idx``): a step's loader batches are merged into one batch (rows padded to one length), where those
    one-row tensors would no longer fit. The model derives the boundaries from ``position_ids`` (each sequence
    restarts at 0) as the varlen kernels and the attention masks of Transformers do without them."""
    return {key: value for key, value in batch.items() if key not in VARLEN_KEYS}


VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")


def pad_for_pipeline(collator: Any, max_length: int | None) -> None:
    """Pipeline stages exchange activations of one shape for the whole run: pad every batch to ``max_length``
    (TRL pads to the longest sample otherwise). Padding adds no label or attention tokens: the loss and the
    metrics are unchanged."""
    if getattr(collator, "pad_to_multiple_of", 0) is None:
        if not max_length:
            raise SFTSettingError("with pp > 1 batches are padded to max_length: set SFTConfig.max_length")
        collator.pad_to_multiple_of = max_length


def evaluation_collator(collator: Any, padding_free: bool) -> Any:
    """The evaluation batches' collator: TRL's own, or :class:`SampleRows` around a padding-free one."""
    return SampleRows(collator, collator.pad_token_id) if padding_free else collator


@dataclass
class SampleRows:
    """Padding-free evaluation batches with one row per sample (a packed sample: its sequences).

    Each sample is collated alone as a padding-free row and the rows are stacked, right-padded with the pad
    token, position 0 and label -100, without an attention mask: the model keeps the sequences of a row apart
    by their ``position_ids``, as in one padding-free row, so each step holds the same label tokens and
    attention. The evaluation then counts samples by rows: it weighs each step's loss by its samples and
    leaves the last step's filler samples out on several data-parallel groups (one padding-free row would count
    as one sample and mix fillers with real samples).
    """

    collator: Any
    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [without_varlen_boundaries(self.collator([example])) for example in examples]
        return merge_micro_batches(rows, self.pad_token_id)


def check_padding_free(padding_free: bool, plan: Any, geometry: Any) -> None:
    """Padding-free batches (``packing`` with a ``bfd`` strategy, or ``padding_free=True``) are one row per loader
    batch, its sequences told apart by their ``position_ids``. A step's loader batches are merged row by row
    and cut into micro-batches by rows: each micro-batch must hold whole loader batches."""
    if not padding_free:
        return
    if plan.pp > 1:
        raise SFTSettingError(
            f"padding-free batches have a length that varies with their sequences, and pipeline stages (pp={plan.pp}) "
            "exchange activations of one shape: use packing=False and padding_free=False (rows padded to "
            "max_length) or packing_strategy='wrapped' with this plan, or a plan with pp = 1"
        )
    accumulation = geometry.gradient_accumulation_steps
    if plan.num_micro_batches > accumulation:
        raise SFTSettingError(
            f"each loader batch is one padding-free row, and this plan's {plan.num_micro_batches} micro-batches "
            f"would cut the step's {accumulation} row(s): set gradient_accumulation_steps to "
            f"{plan.num_micro_batches} (one loader batch per micro-batch), or use packing=False"
        )


def check_sft_settings(model: Any, args: SFTConfig, kwargs: dict[str, Any]) -> None:
    """Refuse, before anything is sharded, SFT settings the runtime's step would not honour."""
    if isinstance(model, str):
        raise SFTSettingError(
            "GalvatronSFTTrainer shards the model before TRL sees it: pass the model object "
            "(AutoModelForCausalLM.from_pretrained(...)), not its name"
        )
    if kwargs.get("peft_config") is not None:
        raise SFTSettingError(
            "pass peft_config to peft.get_peft_model(model, peft_config) and the PeftModel to GalvatronSFTTrainer: "
            "the adapters must be in the model before it is sharded"
        )
    if kwargs.get("compute_loss_func") is not None or args.loss_type != "nll" or args.label_smoothing_factor:
        raise SFTSettingError(
            "GalvatronSFTTrainer trains with the model's token-mean cross-entropy (TRL's loss_type='nll'); "
            "compute_loss_func, loss_type='dft' and label smoothing are not supported: leave them unset"
        )
    if getattr(args, "activation_offloading", False):
        raise SFTSettingError(
            "activation_offloading is not supported; use the plan's activation checkpointing (--checkpoint)"
        )

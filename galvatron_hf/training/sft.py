"""``GalvatronSFTTrainer``: TRL's ``SFTTrainer`` running a galvatron plan (``pip install galvatron-hf[trl]``).

Swap two names in a TRL script::

    args = GalvatronSFTConfig(output_dir="out", max_length=1024, completion_only_loss=True, auto_parallel=True)
    trainer = GalvatronSFTTrainer(model, args, train_dataset=dataset, processing_class=tokenizer)

TRL's dataset preparation (formatting, chat templates, tokenizing, completion-only and assistant-only labels,
packing) runs as in ``SFTTrainer``: it builds the ``labels`` the runtime's loss reads, which is TRL's ``nll``
loss (the mean over the step's label tokens). The step runs through the runtime, not through
``SFTTrainer.compute_loss``, so TRL's logged metrics are measured here from the same forward
(:class:`TokenStats`): ``entropy`` and ``mean_token_accuracy`` over the label tokens of the whole step (every
data-parallel group; with pp > 1 on the last stage, where the logits are) and ``num_tokens`` seen so far. The
plan is priced for ``max_length`` tokens when ``seq_len`` is not given; with pp > 1 batches are padded to
``max_length`` (pipeline stages exchange fixed shapes), and packing needs pp = 1 and one micro-batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from trl import SFTConfig, SFTTrainer

from galvatron_hf.constants import IGNORE_INDEX
from galvatron_hf.parallel.parallel_dims import Layout
from galvatron_hf.trainer import GalvatronTrainer
from galvatron_hf.training.arguments import GalvatronTrainingArguments


class SFTSettingError(ValueError):
    """An SFTTrainer setting the runtime cannot honour; the message names the fix."""


@dataclass
class GalvatronSFTConfig(GalvatronTrainingArguments, SFTConfig):
    """SFTConfig plus the plan options; every inherited field keeps its TRL meaning."""


class TokenStats:
    """Entropy, top-1 hits and label tokens of the forwards of one step, from the logits the model returns.

    pp = 1: a forward hook on the model reads ``labels`` and ``logits``. pp > 1: the last stage's loss task is
    wrapped, which sees each micro-batch's logits and labels. Sums stay local until :meth:`reduce`, which takes
    the step's last ``num_micro_batches`` forwards.
    """

    def __init__(self, parallel_model: Any) -> None:
        self.parallel_model = parallel_model
        self.forwards: list[torch.Tensor] = []  # per forward: entropy sum, top-1 hits, label tokens
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
        """Add one forward's label tokens (position t predicts label t + 1, as TRL's loss shifts them)."""
        logits, labels = logits[:, :-1].float(), labels[:, 1:].to(logits.device)
        mask = labels != IGNORE_INDEX
        log_probs = torch.log_softmax(logits, dim=-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        correct = logits.argmax(-1) == labels
        sums = [entropy[mask].double().sum(), correct[mask].sum(), mask.sum()]
        self.forwards.append(torch.stack([value.double().cpu() for value in sums]))

    def add_tokens(self, batch: dict[str, Any]) -> None:
        """TRL's ``num_tokens``: attention-mask tokens, or the packed length of a padding-free batch."""
        if batch.get("attention_mask") is not None:
            self.tokens += float(batch["attention_mask"].sum())
        elif batch.get("position_ids") is not None:
            self.tokens += float(batch["position_ids"].shape[-1])

    def reduce(self) -> tuple[float, float, float]:
        """(entropy, accuracy, tokens) of everything added since the last call, over all ranks (each sample counted
        once: the last stage's ranks of TP rank 0 in the data-loading layout contribute); then starts again."""
        pm = self.parallel_model
        counts = torch.zeros(4, dtype=torch.float64)
        if self._counts_here():
            for forward in self.forwards[-pm.plan.num_micro_batches :]:  # a pipeline schedule's first step also
                counts[:3] += forward  # runs its loss on shape-inference placeholders before the micro-batches
            counts[3] = self.tokens
        self.forwards, self.tokens = [], 0.0
        counts = counts.to(pm.device)
        dist.all_reduce(counts)
        entropy, correct, valid, tokens = counts.tolist()
        return (entropy / valid if valid else 0.0), (correct / valid if valid else 0.0), tokens

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
        check_packing(self.args, self.plan)
        if self.plan.pp > 1:
            pad_for_pipeline(self.data_collator, self.args.max_length)
        self.token_stats = TokenStats(self.parallel_model)

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        self.token_stats.add_tokens(inputs)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not self._pending:  # the step ran
            self._record("train")
        return loss

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys=None):
        output = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        self._record("eval")
        return output

    def _record(self, mode: str) -> None:
        entropy, accuracy, tokens = self.token_stats.reduce()
        self._metrics[mode]["entropy"].append(entropy)
        self._metrics[mode]["mean_token_accuracy"].append(accuracy)
        if mode == "train":
            self._total_train_tokens += tokens
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]


def pad_for_pipeline(collator: Any, max_length: int | None) -> None:
    """Pipeline stages exchange activations of one shape for the whole run: pad every batch to ``max_length``
    (TRL pads to the longest sample otherwise). Padding adds no label or attention tokens: the loss and the
    metrics are unchanged."""
    if getattr(collator, "pad_to_multiple_of", 0) is None:
        if not max_length:
            raise SFTSettingError("with pp > 1 batches are padded to max_length: set SFTConfig.max_length")
        collator.pad_to_multiple_of = max_length


def check_packing(args: SFTConfig, plan: Any) -> None:
    """Packed batches are padding-free (one row holding the loader batch's sequences, with position ids): they
    cannot be cut into micro-batches by rows, and an evaluation's last step cannot drop the filler samples
    (they share the row) when several data-parallel groups read the data."""
    eval_packing = args.packing if args.eval_packing is None else args.eval_packing
    if eval_packing and plan.vocab.dp > 1:
        raise SFTSettingError(
            f"packed evaluation batches cannot drop the last step's filler samples on {plan.vocab.dp} data-parallel "
            "groups: set eval_packing=False (evaluation batches padded per sample)"
        )
    if args.packing and (plan.pp > 1 or plan.num_micro_batches > 1):
        raise SFTSettingError(
            f"packing makes each loader batch one padding-free row, which this plan (pp={plan.pp}, "
            f"{plan.num_micro_batches} micro-batches) would have to cut into micro-batches: use packing=False "
            "(padded batches) with this plan, or a plan with pp = 1 and one micro-batch"
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

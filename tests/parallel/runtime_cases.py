"""Shared pieces of the runtime tests: tiny models per family, batches, plans, a single-process reference
and the per-rank worker that trains a parallelised copy and reports losses, full gradients and shard sizes.

Imported by the test modules (and, through ``run_distributed``'s spawn, by every rank).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from galvatron_hf.planner.plan import OFFLOAD_STATES, LayerStrategy, Plan, VocabStrategy

GLOBAL_BATCH = 8
SEQ = 6
STEPS = 3
LR = 0.05


# ----- tiny models ----------------------------------------------------------------------------------------
def make_config(family: str):
    import transformers as tf

    if family == "llama":
        return tf.LlamaConfig(
            vocab_size=128,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            max_position_embeddings=64,
            attention_dropout=0.0,
            tie_word_embeddings=False,
        )
    if family == "gpt2":
        return tf.GPT2Config(
            vocab_size=128,
            n_embd=64,
            n_layer=4,
            n_head=4,
            n_positions=64,
            n_inner=128,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    if family == "bert":
        return tf.BertConfig(
            vocab_size=128,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    if family == "vit":
        return tf.ViTConfig(
            image_size=16,
            patch_size=4,
            num_channels=3,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            num_labels=5,
        )
    if family == "t5":
        return tf.T5Config(
            vocab_size=128,
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
            eos_token_id=1,
        )
    raise ValueError(family)


def make_model(family: str, seed: int = 0) -> nn.Module:
    import transformers as tf

    config = make_config(family)
    config._attn_implementation = "sdpa" if family != "t5" else "eager"
    classes = {
        "llama": tf.LlamaForCausalLM,
        "gpt2": tf.GPT2LMHeadModel,
        "bert": tf.BertForMaskedLM,
        "vit": tf.ViTForImageClassification,
        "t5": tf.T5ForConditionalGeneration,
    }
    torch.manual_seed(seed)
    return classes[family](config).float()


def make_batch(family: str, step: int, size: int = GLOBAL_BATCH) -> dict[str, torch.Tensor]:
    """The global batch of one step (same on every rank: seeded by the step)."""
    gen = torch.Generator().manual_seed(1000 + step)
    if family == "vit":
        return {
            "pixel_values": torch.randn(size, 3, 16, 16, generator=gen),
            "labels": torch.randint(0, 5, (size,), generator=gen),
        }
    ids = torch.randint(0, 128, (size, SEQ), generator=gen)
    labels = ids.clone()
    labels[torch.rand(size, SEQ, generator=gen) < 0.3] = -100  # uneven label counts per sample
    if family == "t5":
        target = torch.randint(0, 128, (size, SEQ - 2), generator=gen)
        return {"input_ids": ids, "labels": target}
    if family in ("llama", "bert"):  # right padding on some samples: the 4-D masks must follow the layouts
        mask = torch.ones(size, SEQ, dtype=torch.long)
        for row, pad in enumerate(torch.randint(0, 3, (size,), generator=gen).tolist()):
            if pad:
                mask[row, -pad:] = 0
        labels[mask == 0] = -100
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return {"input_ids": ids, "labels": labels}


def split_batch(batch: dict[str, torch.Tensor], part: int, parts: int) -> dict[str, torch.Tensor]:
    return {k: v.chunk(parts)[part] for k, v in batch.items()}


# ----- plans ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One layout to test: per-block (tp, dp_type, checkpoint) and the vocabulary (tp, dp_type)."""

    name: str
    blocks: tuple[tuple[int, str, bool], ...]
    vocab: tuple[int, str] = (1, "ddp")
    mixed_precision: str = "fp32"
    meta: bool = False  # build on the meta device, load the reference weights with DCP's set_model_state_dict
    clip: float | None = None  # clip the gradient norm to this before recording gradients
    pp: int = 1  # pipeline stages (blocks split evenly), with ``micro_batches`` micro-batches
    micro_batches: int = 1
    compile_backend: str | None = None  # torch.compile every block with this backend
    chunked_loss: bool = False  # the causal-LM loss in token chunks (no materialised logits)
    sp: bool = False  # sequence parallelism on every block with tp > 1
    offload: bool = False  # CPU offload of parameters, gradients and optimizer states

    def plan(self, world: int) -> Plan:
        n = world // self.pp
        count = len(self.blocks)
        layers = [
            LayerStrategy(i * self.pp // count, tp, n // tp, dp_type, ckpt, sp=self.sp and tp > 1)
            for i, (tp, dp_type, ckpt) in enumerate(self.blocks)
        ]
        vocab = VocabStrategy(self.vocab[0], n // self.vocab[0], self.vocab[1])
        return Plan(
            world_size=world,
            pp=self.pp,
            schedule="gpipe",
            global_batch_size=GLOBAL_BATCH,
            num_micro_batches=self.micro_batches,
            layers=layers,
            vocab=vocab,
            mixed_precision=self.mixed_precision,
            offload=list(OFFLOAD_STATES) if self.offload else [],
        )


def uniform(
    name: str,
    blocks: int,
    tp: int,
    dp_type: str,
    vocab_tp: int | None = None,
    ckpt: bool = False,
    mixed_precision: str = "fp32",
) -> Case:
    return Case(
        name,
        tuple((tp, dp_type, ckpt) for _ in range(blocks)),
        (vocab_tp or tp, dp_type),
        mixed_precision,
    )


def standard_cases(blocks: int = 4) -> list[Case]:
    """The layouts every family must match the single process on (world size 4)."""
    mixed = (
        (1, "zero3", False),
        (2, "ddp", True),
        (4, "zero2", False),
        (2, "zero3", True),
    )
    return [
        uniform("ddp4", blocks, 1, "ddp"),
        uniform("zero2x4", blocks, 1, "zero2"),
        uniform("zero3x4", blocks, 1, "zero3", ckpt=True),
        uniform("tp2_zero3x2", blocks, 2, "zero3"),
        uniform("tp4", blocks, 4, "ddp"),
        Case(
            "mixed_1242",
            mixed[:blocks] if blocks == 4 else tuple(mixed[i % 4] for i in range(blocks)),
            (2, "zero3"),
        ),
    ]


# ----- single process reference ---------------------------------------------------------------------------
@functools.cache
def reference_run(family: str, steps: int = STEPS, clip: float | None = None) -> dict:
    """Losses and gradients of the plain HF model on the whole global batch, SGD between steps.

    Computed once per arguments in a test process (it is deterministic and the tests only read it)."""
    model = make_model(family)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    losses, grads, norms = [], [], []
    for step in range(steps):
        batch = make_batch(family, step)
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.item())
        if clip is not None:
            norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), clip).item())
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
        optimizer.step()
        optimizer.zero_grad()
    return {
        "losses": losses,
        "grads": grads,
        "norms": norms,
        "names": [n for n, _ in model.named_parameters()],
    }


# ----- the parallel run (one rank) ------------------------------------------------------------------------
def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def parallel_run(rank: int, world: int, family: str, cases: list[Case]) -> dict:
    """Train each case for STEPS steps; rank 0 returns losses and full gradients, every rank shard sizes."""
    from galvatron_hf.adapters import describe_model
    from galvatron_hf.parallel import parallelize

    results = {}
    for case in cases:
        model = make_model(family)
        spec = describe_model(model, seq_len=SEQ if family != "vit" else None)
        plan = case.plan(world)
        reference_state, meta = None, case.meta
        if meta:
            reference_state = {k: v.clone() for k, v in model.state_dict().items()}
            with torch.device("meta"):
                model = type(model)(model.config)
        pm = parallelize(model, plan, spec=spec, device="cpu", mixed_precision=case.mixed_precision, **_speed(case))
        if meta:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
            )

            set_model_state_dict(
                pm.module,
                reference_state,
                options=StateDictOptions(full_state_dict=True, strict=False),
            )
        optimizer = torch.optim.SGD(pm.parameters(), lr=LR)
        losses, grads, norms = [], [], []
        for step in range(STEPS):
            local = split_batch(make_batch(family, step), pm.data_rank, pm.data_size)
            losses.append(pm.train_step(local).item())
            if case.clip is not None:
                norms.append(pm.clip_grad_norm_(case.clip).item())
            grads.append({n: _full(p.grad) for n, p in pm.module.named_parameters()})
            pm.step(optimizer)
            optimizer.zero_grad()
        sizes = {n: (_local_numel(p), tuple(p.shape)) for n, p in pm.module.named_parameters()}
        results[case.name] = {
            "losses": losses,
            "norms": norms,
            "grads": grads if rank % (world // case.pp) == 0 else None,  # first rank of each stage
            "sizes": sizes,
            "names": [n for n, _ in pm.module.named_parameters()],
        }
    return results


def _speed(case: Case) -> dict:
    from galvatron_hf.parallel.compile import CompileConfig
    from galvatron_hf.parallel.kernels import KernelConfig

    return {
        "compile_config": CompileConfig(backend=case.compile_backend) if case.compile_backend else None,
        "kernels": KernelConfig(chunked_loss=True) if case.chunked_loss else None,
    }


def merged_grads(results: list[dict], name: str) -> list[dict]:
    """Per step, the full gradients of every parameter, merged over the pipeline stages' first ranks."""
    steps = [r[name]["grads"] for r in results if r[name]["grads"] is not None]
    return [{k: v for stage in stages for k, v in stage.items()} for stages in zip(*steps)]


def _local_numel(param: torch.Tensor) -> int:
    return param.to_local().numel() if hasattr(param, "to_local") else param.numel()


# ----- expected shard sizes -------------------------------------------------------------------------------
def alias_names(model: nn.Module) -> dict[str, list[str]]:
    """Every name of each parameter (BERT's ``cls.predictions.bias`` is ``cls.predictions.decoder.bias``)."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return {name: names for names in groups.values() for name in names}


def share_divisors(spec, plan: Plan, name: str, aliases: list[str] | None = None) -> tuple[int, int]:
    """(TP split, ZeRO shard count) that parameter ``name`` must be divided by under ``plan``."""
    tp, dp, dp_type, rules = plan.vocab.tp, plan.vocab.dp, plan.vocab.dp_type, []
    for layer in spec.layers:
        if not layer.is_block:
            rules += [(layer.root, r) for r in layer.tp_rules]
    for index, layer in enumerate(spec.blocks):
        if name.startswith(layer.root + "."):
            strategy = plan.layers[index]
            tp, dp, dp_type = strategy.tp, strategy.dp, strategy.dp_type
            rules = [(layer.root, r) for r in layer.tp_rules]
    tp_div = 1
    for root, rule in rules:
        module = f"{root}.{rule.module}" if root else rule.module
        if {f"{module}.weight", f"{module}.bias"} & {name, *(aliases or ())}:
            split = name.endswith("weight") or (rule.style == "colwise" and rule.fused == 1)
            tp_div = tp if split else 1
    return tp_div, (dp if dp_type != "ddp" else 1)


def check_shares(spec, plan: Plan, world: int, sizes_by_rank: list[dict], aliases: dict | None = None) -> None:
    """Every rank holds at most its share of each parameter, and the shares add up to the whole.

    FSDP2 splits dim 0 in ceil-sized chunks (the last ranks may hold less, or nothing).
    """
    import math

    for name, (_, shape) in sizes_by_rank[0].items():
        numel = math.prod(shape)
        tp_div, dp_div = share_divisors(spec, plan, name, (aliases or {}).get(name))
        copies = world // (tp_div * dp_div)
        held = [sizes[name][0] for sizes in sizes_by_rank]
        assert sum(held) == numel * copies, f"{name}: ranks hold {held}, expected {numel} x {copies} copies in all"
        bound = math.ceil(shape[0] / dp_div) * (numel // shape[0]) // tp_div
        assert max(held) <= bound, f"{name}: a rank holds {max(held)} elements, its share is at most {bound}"

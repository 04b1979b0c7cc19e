"""Shared pieces of the multi-GPU suite: the launch environment, model configs, batches, timing, JSON files.

Every script of the suite runs under ``torchrun --standalone --nproc_per_node N`` (``plans.py`` and
``report.py`` excepted: they are one plain process). On GPUs the process group is NCCL with one device per
rank; with ``--cpu`` (the dry run) it is gloo on CPU with one thread per rank, so the whole suite can be
checked on a laptop before the one GPU call it was written for.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

GB = 1e9  # the planner's unit (docs/cost_model.md)

# Llama shapes the suite knows. "tiny" is for the CPU dry run; every shape has as many KV heads as heads
# (8, 16 or 32), so that every TP degree up to 8 divides them (docs: TP must divide num_key_value_heads).
MODEL_SHAPES: dict[str, dict[str, int]] = {
    "tiny": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "vocab_size": 512,
    },
    "1.3b": {
        "hidden_size": 2048,
        "intermediate_size": 5504,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "vocab_size": 32000,
    },
    "2.7b": {
        "hidden_size": 2560,
        "intermediate_size": 6912,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
    },
    "7b": {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
    },
}


@dataclass(frozen=True)
class Launch:
    """Where this process sits: rank, world, its device, and whether this is the CPU dry run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    cpu_dry_run: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start(cpu_dry_run: bool) -> Launch:
    """Initialise the process group torchrun described: NCCL on GPUs, gloo on CPU (one thread per rank)."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not cpu_dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run the suite with --cpu-dry-run (DRY_RUN=1) on a machine without GPUs")
    if cpu_dry_run:
        torch.set_num_threads(1)
        device, backend = torch.device("cpu"), "gloo"
    else:
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    if world > 1 or "MASTER_ADDR" in os.environ:
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=600), **kwargs)
    else:  # a single plain process (tests of one script): a file store of one rank
        import tempfile

        store = Path(tempfile.mkdtemp(prefix="multi_gpu_")) / "store"
        dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)
    return Launch(rank, world, local_rank, device, cpu_dry_run)


def finish(code: int = 0) -> None:
    """Leave without interpreter teardown: gloo/NCCL processes sometimes abort there after the work is done
    (reference: pytorch-cpu-distributed-facts.md), which would turn a finished phase into a failed one.

    A failing rank (``code != 0``) leaves at once: destroying an NCCL group while the other ranks wait in a
    collective can block, and torchrun stops the other ranks as soon as this one exits."""
    try:
        if code == 0 and dist.is_initialized():
            dist.destroy_process_group()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def llama_config(shape: str, seq_len: int):
    """A LlamaConfig of a known shape (random weights are built from it; nothing is downloaded)."""
    from transformers import LlamaConfig

    if shape not in MODEL_SHAPES:
        raise SystemExit(f"unknown model shape {shape!r}: use one of {sorted(MODEL_SHAPES)}")
    config = LlamaConfig(
        **MODEL_SHAPES[shape],
        max_position_embeddings=max(seq_len, 128),
        tie_word_embeddings=False,
        attention_dropout=0.0,
    )
    config.architectures = ["LlamaForCausalLM"]
    return config


def random_batch(vocab_size: int, samples: int, seq_len: int, seed: int) -> dict[str, torch.Tensor]:
    """A global batch of random tokens, the same on every rank (seeded), labels = inputs (causal LM)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (samples, seq_len), generator=generator)
    return {"input_ids": ids, "labels": ids.clone()}


def part_of(batch: dict[str, torch.Tensor], part: int, parts: int) -> dict[str, torch.Tensor]:
    return {k: v.chunk(parts)[part] for k, v in batch.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step: Callable[[int], None], warmup: int, steps: int, device: torch.device) -> list[float]:
    """Wall time of each timed step (after ``warmup`` untimed ones), device synchronised around each."""
    times = []
    for index in range(warmup + steps):
        sync(device)
        begin = time.perf_counter()
        step(index)
        sync(device)
        if index >= warmup:
            times.append(time.perf_counter() - begin)
    return times


def max_over_ranks(value: float, device: torch.device) -> float:
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def environment() -> dict[str, Any]:
    """Versions and devices, recorded in every result file (benchmarks record what they ran with)."""
    import accelerate
    import transformers

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "nccl_nvls_enable": os.environ.get("NCCL_NVLS_ENABLE"),
    }
    return info


def write_json(path: str | Path, data: Any) -> Path:
    """Write atomically (a phase killed by its time box never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def log(launch: Launch | None, message: str) -> None:
    """Progress on stderr from rank 0 only (the phase logs stay readable with 8 ranks)."""
    if launch is None or launch.is_main:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

"""The random-number state of one process: captured, applied, and stored per rank in a checkpoint.

One helper for every user: ``save_checkpoint`` writes each rank's state into ``rng/rank_<r>.pt``,
``load_checkpoint`` applies it back, and ``GalvatronTrainer`` captures the restored state and applies it
again where the HF Trainer restores RNG (after skipping the data already trained on), so a resume draws the
same dropout masks and shuffles as an uninterrupted run.

The state holds python's, numpy's, torch's CPU generator and, when CUDA is in use, this rank's current
device's generator. numpy's key array is held as a tensor, so the state file loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from galvatron_hf.checkpoint.atomic import atomic_torch_save
from galvatron_hf.checkpoint.collective import rank, world_size
from galvatron_hf.checkpoint.manifest import RNG_DIR, CheckpointError
from galvatron_hf.planner.plan import Plan

RngRestored = Literal["per-rank", "rank0", "none"]


def capture_rng() -> dict[str, Any]:
    """This process's generator states (see the module docstring for what is included)."""
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's current device
    return state


def apply_rng(state: dict[str, Any]) -> None:
    """Set every generator to ``state`` (from :func:`capture_rng`); a CUDA state is skipped without CUDA."""
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def rng_file(directory: Path, of_rank: int) -> Path:
    return directory / RNG_DIR / f"rank_{of_rank:05d}.pt"


def write_rank_rng(directory: Path) -> None:
    """Store this rank's state in a (staging) checkpoint directory."""
    atomic_torch_save(capture_rng(), rng_file(directory, rank()))


def restore_rank_rng(
    directory: Path, saved_world_size: int, saved_plan: Plan | None, plan: Plan | None
) -> RngRestored:
    """Apply the RNG state a rank should resume with, and say whose it was.

    Same world size and layout: each rank its own ("per-rank"). Otherwise every rank gets rank 0's
    ("rank0"): ranks have new roles, and TP / pipeline peers must draw the same numbers.
    """
    same_layout = saved_world_size == world_size() and (
        saved_plan is None or plan is None or layout_key(saved_plan) == layout_key(plan)
    )
    source = rng_file(directory, rank() if same_layout else 0)
    if not source.is_file():
        raise CheckpointError(f"{directory} is incomplete: {source} is missing (pass restore_rng=False to skip RNG)")
    apply_rng(torch.load(source, weights_only=True))
    return "per-rank" if same_layout else "rank0"


def layout_key(plan: Plan) -> tuple:
    """What makes two plans give every rank the same role (world size, stages, block and vocab layouts)."""
    return (plan.world_size, plan.pp, tuple(plan.layers), plan.vocab)

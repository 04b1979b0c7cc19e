"""What a resume keeps: the checkpoint's global batch, so the position in the data is exact on any world size.

The Trainer resumes by counting optimizer steps: it skips ``global_step`` steps' worth of loader batches. The
data loaders (``training/data.py``) make one step's global batch the same contiguous run of samples of one
seeded permutation whatever the number of data-parallel groups, so a resume lands exactly where the saving
run stopped as long as the global batch is the same. Without ``global_batch_size`` the global batch follows
the process count (per-device batch x data-parallel groups x accumulation steps), so a resume on another
world size keeps the checkpoint's global batch instead (the per-device batch is derived from it). A global
batch the user asks for explicitly (``global_batch_size``, a plan file or a ``Plan``) that differs from the
checkpoint's is refused unless ``ignore_data_skip`` says the data position may be lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galvatron_hf.checkpoint.rng import layout_key
from galvatron_hf.planner.plan import Plan


class ResumeBatchError(ValueError):
    """A resume whose global batch cannot be the checkpoint's; the message names the fix."""


@dataclass(frozen=True)
class SavedLayout:
    """What a checkpoint says about the run that wrote it."""

    path: Path
    plan: Plan | None  # None: not a galvatron_hf checkpoint, or saved without a plan
    world_size: int | None

    @property
    def global_batch_size(self) -> int | None:
        return self.plan.global_batch_size if self.plan is not None else None


def saved_layout(path: str | Path) -> SavedLayout:
    """The plan and world size a checkpoint directory was saved with (None where it does not say)."""
    import json

    from galvatron_hf.checkpoint.manifest import MANIFEST_NAME, PLAN_NAME

    path = Path(path)
    plan = Plan.load(path / PLAN_NAME) if (path / PLAN_NAME).is_file() else None
    world_size = None
    if (path / MANIFEST_NAME).is_file():
        world_size = json.loads((path / MANIFEST_NAME).read_text()).get("world_size")
    return SavedLayout(path, plan, world_size)


def checkpoint_batch_for_request(args: Any) -> int | None:
    """The global batch the plan should be made for when ``args.resume_from_checkpoint`` names a checkpoint
    and no global batch is asked for; None otherwise (the request's own rule applies)."""
    resume = getattr(args, "resume_from_checkpoint", None)
    if not isinstance(resume, (str, Path)) or getattr(args, "global_batch_size", None) is not None:
        return None
    if getattr(args, "galvatron_plan", None):
        return None  # a plan file carries its own global batch
    path = Path(resume)
    return saved_layout(path).global_batch_size if path.is_dir() else None


def resume_batch_decision(
    saved: int | None, current: int, asked: bool, ignore_data_skip: bool, where: Path
) -> tuple[int, str | None]:
    """(global batch to train with, note to print) for a resume; raises :class:`ResumeBatchError`.

    ``asked``: the current global batch was given explicitly (``global_batch_size``, a plan file, a Plan).
    """
    if saved is None or saved == current:
        return current, None
    if not asked:
        return saved, (
            f"galvatron: resuming {where} with its global batch of {saved} samples per step (this launch's "
            f"batch arguments give {current}); the data position stays exact. Pass global_batch_size to choose "
            "another (with ignore_data_skip=True)"
        )
    if ignore_data_skip:
        return current, (
            f"galvatron: {where} was trained with a global batch of {saved}; this run trains with {current} "
            "(ignore_data_skip=True): the Trainer counts steps, not samples, so the epoch's data starts over "
            "from its beginning and the epoch number follows the new steps per epoch"
        )
    raise ResumeBatchError(
        f"{where} was trained with a global batch of {saved} samples per step and this run asks for {current}: "
        "the Trainer resumes by counting steps, so it would skip the wrong samples. Resume with "
        f"global_batch_size={saved} (or no global_batch_size and no plan file: the checkpoint's batch is kept), "
        "or pass ignore_data_skip=True to accept that the epoch's data order starts over"
    )


def describe_layout_change(saved: SavedLayout, plan: Plan, world_size: int) -> str | None:
    """One line saying how the layout differs from the checkpoint's, or None when it is the same."""
    if saved.plan is None or (layout_key(saved.plan) == layout_key(plan) and saved.plan.world_size == world_size):
        return None
    return (
        f"galvatron: {saved.path} was saved on {saved.plan.world_size} process(es) with {_describe(saved.plan)}; "
        f"resharded (model, optimizer, scheduler, RNG) into {world_size} process(es) with {_describe(plan)}"
    )


def _describe(plan: Plan) -> str:
    from galvatron_hf.planner.summary import layer_runs, strategy_text

    blocks = "; ".join(
        f"blocks {first}-{last} stage {layer.stage} {strategy_text(layer.tp, layer.dp, layer.dp_type, layer.checkpoint)}"
        for first, last, layer in layer_runs(plan)
    )
    return (
        f"pp={plan.pp} ({plan.schedule}, {plan.num_micro_batches} micro-batch(es)), global batch "
        f"{plan.global_batch_size}, {blocks}"
    )

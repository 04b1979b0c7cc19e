"""What a resume does with the checkpoint's global batch (``training/resume.py``), without a launch: kept when
the batch follows the process count, refused when another one is asked for (unless ``ignore_data_skip``),
read from ``resume_from_checkpoint`` in the arguments for the plan, and the layout change described."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from galvatron_hf.checkpoint.manifest import PLAN_NAME
from galvatron_hf.planner.plan import LayerStrategy, Plan, VocabStrategy
from galvatron_hf.training.resume import (
    ResumeBatchError,
    checkpoint_batch_for_request,
    describe_layout_change,
    resume_batch_decision,
    saved_layout,
)

WHERE = Path("out/checkpoint-4")


def _plan(world: int, pp: int = 1, batch: int = 8) -> Plan:
    dp = world // pp
    layers = [LayerStrategy(stage=i * pp // 2, tp=1, dp=dp, dp_type="ddp", checkpoint=False) for i in range(2)]
    return Plan(world, pp, "gpipe", batch, 1, layers, VocabStrategy(1, dp, "ddp"), mixed_precision="fp32")


def test_the_checkpoints_batch_is_kept_when_none_is_asked_for():
    batch, note = resume_batch_decision(8, 16, asked=False, ignore_data_skip=False, where=WHERE)
    assert batch == 8 and "global batch of 8" in note and "give 16" in note
    assert resume_batch_decision(8, 8, asked=True, ignore_data_skip=False, where=WHERE) == (8, None)
    assert resume_batch_decision(None, 16, asked=False, ignore_data_skip=False, where=WHERE) == (16, None)


def test_another_batch_asked_for_is_refused_unless_the_data_position_may_be_lost():
    with pytest.raises(ResumeBatchError, match=r"trained with a global batch of 8 .* asks for 16.*global_batch_size=8"):
        resume_batch_decision(8, 16, asked=True, ignore_data_skip=False, where=WHERE)
    batch, note = resume_batch_decision(8, 16, asked=True, ignore_data_skip=True, where=WHERE)
    assert batch == 16 and "starts over" in note


def test_the_plan_is_made_for_the_batch_of_the_checkpoint_named_in_the_arguments(tmp_path):
    _plan(2).save(tmp_path / PLAN_NAME)
    args = SimpleNamespace(resume_from_checkpoint=str(tmp_path), global_batch_size=None, galvatron_plan=None)
    assert checkpoint_batch_for_request(args) == 8
    assert checkpoint_batch_for_request(SimpleNamespace(**{**vars(args), "global_batch_size": 4})) is None
    assert checkpoint_batch_for_request(SimpleNamespace(**{**vars(args), "galvatron_plan": "p.json"})) is None
    assert checkpoint_batch_for_request(SimpleNamespace(**{**vars(args), "resume_from_checkpoint": None})) is None


def test_a_layout_change_is_described(tmp_path):
    _plan(4, pp=2).save(tmp_path / PLAN_NAME)
    saved = saved_layout(tmp_path)
    text = describe_layout_change(saved, _plan(2), world_size=2)
    assert "saved on 4 process(es) with pp=2" in text and "into 2 process(es) with pp=1" in text
    assert describe_layout_change(saved, _plan(4, pp=2), world_size=4) is None

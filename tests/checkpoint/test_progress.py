"""The progress bar over a DCP load counts every entry the rank reads and changes nothing it loads."""

from __future__ import annotations

import torch
import torch.distributed.checkpoint as dcp

from galvatron_hf.checkpoint.progress import LoadProgressPlanner


def test_a_load_shows_a_bar_that_counts_every_entry(tmp_path, capsys):
    saved = {"weight": torch.randn(4, 3), "bias": torch.randn(3), "step": 7}
    dcp.save(saved, checkpoint_id=str(tmp_path), no_dist=True)
    loaded = {"weight": torch.zeros(4, 3), "bias": torch.zeros(3), "step": 0}
    dcp.load(loaded, checkpoint_id=str(tmp_path), planner=LoadProgressPlanner("loading test"), no_dist=True)
    assert torch.equal(loaded["weight"], saved["weight"]) and torch.equal(loaded["bias"], saved["bias"])
    assert loaded["step"] == 7
    shown = capsys.readouterr().err
    assert "loading test" in shown and "3/3" in shown

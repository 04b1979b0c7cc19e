"""Fast checks (no launch) of ``galvatron_hf.training.optimizer``: fp16 steps routed through the runtime's loss
scaler (an overflowing step is skipped and reported), once only."""

from __future__ import annotations

import torch

from galvatron_hf.parallel.loss_scaling import LossScaler
from galvatron_hf.training.optimizer import step_through_scaler


def test_steps_go_through_the_scaler_and_report_skips():
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scaler = LossScaler(init_scale=4.0)
    reported: list[bool] = []
    step_through_scaler(optimizer, scaler, reported.append)
    step_through_scaler(optimizer, scaler, reported.append)  # a second routing changes nothing

    param.grad = torch.full((3,), 8.0)
    scaler.unscale_([param])
    optimizer.step()
    assert reported == [True] and param.tolist() == [-1.0, -1.0, -1.0]

    param.grad = torch.tensor([1.0, float("inf"), 1.0])
    scaler.unscale_([param])
    optimizer.step()
    assert reported == [True, False] and param.tolist() == [-1.0, -1.0, -1.0]
    assert scaler.scale == 2.0  # backed off


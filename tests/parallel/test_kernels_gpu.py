"""On one CUDA device: Liger's kernels and compiled blocks train to the eager losses (bf16 tolerance)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import runtime_cases as rc

from galvatron_hf.testing.distributed import run_distributed

pytestmark = [pytest.mark.gpu, pytest.mark.distributed]


def _losses(rank: int, world: int, kernels, compile_backend) -> list[float]:
    from galvatron_hf.adapters import describe_model
    from galvatron_hf.parallel import parallelize
    from galvatron_hf.parallel.compile import CompileConfig

    model = rc.make_model("llama")
    spec = describe_model(model, seq_len=rc.SEQ)
    config = CompileConfig(backend=compile_backend) if compile_backend else None
    pm = parallelize(model, rc.uniform("one", 4, 1, "ddp").plan(1), spec=spec, device="cuda",
                     mixed_precision="bf16", kernels=kernels, compile_config=config)
    optimizer = torch.optim.SGD(pm.parameters(), lr=rc.LR)
    losses = []
    for step in range(rc.STEPS):
        losses.append(pm.train_step(rc.make_batch("llama", step)).item())
        pm.step(optimizer)
        optimizer.zero_grad()
    return losses


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="needs liger-kernel")
def test_liger_and_compile_match_eager_in_bf16():
    from galvatron_hf.parallel.kernels import KernelConfig

    eager = run_distributed(_losses, 1, None, None, backend="nccl")[0]
    fused = run_distributed(_losses, 1, KernelConfig(liger=True), "inductor", backend="nccl")[0]
    assert fused == pytest.approx(eager, rel=2e-2)

"""parallelize() with pp > 1: the pipeline stages and runner under per-layer TP / DP layouts.

4 ranks, 2 stages of 2 ranks: stage 0 blocks (tp1 zero3, tp2 ddp), stage 1 blocks (tp2 zero2 checkpointed,
tp1 ddp), vocabulary tp 2; two micro-batches. Loss, gradients and clipped norm equal one process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import runtime_cases as rc

from galvatron_hf.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed
BLOCKS = ((1, "zero3", False), (2, "ddp", False), (2, "zero2", True), (1, "ddp", False))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_pipeline_with_mixed_layouts_matches_single_process(family):
    case = rc.Case("pp2_mixed", BLOCKS, (2, "zero3"), clip=0.5, pp=2, micro_batches=2)
    reference = rc.reference_run(family, clip=0.5)
    results = run_distributed(rc.parallel_run, 4, family, [case], timeout_s=900)
    got = results[0][case.name]
    assert got["losses"] == pytest.approx(reference["losses"], rel=1e-5)
    assert got["norms"] == pytest.approx(reference["norms"], rel=1e-5)
    grads = rc.merged_grads(results, case.name)
    for step in range(rc.STEPS):
        for name, ref in reference["grads"][step].items():
            error = (grads[step][name] - ref).norm().item()
            assert error <= 1e-5 * ref.norm().item() + 1e-9, f"step {step}: gradient of {name} off by {error:.2e}"

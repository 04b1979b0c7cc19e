"""Sequence parallelism with TP (LayerStrategy.sp) trains to the single-process losses and gradients: one
2-rank launch (SP x TP2, Llama and GPT-2, with checkpointing and ZeRO-3) and one 4-rank launch (SP x TP2 x DP2
beside non-SP blocks, and SP x TP2 with PP2)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import runtime_cases as rc

from galvatron_hf.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed

TWO_RANKS = {
    "llama": [
        rc.Case("sp_tp2", tuple((2, "ddp", False) for _ in range(4)), (2, "ddp"), sp=True),
        rc.Case("sp_tp2_zero3_ckpt", tuple((2, "zero3", i % 2 == 0) for i in range(4)), (1, "zero3"), sp=True),
    ],
    "gpt2": [rc.Case("sp_tp2", tuple((2, "ddp", i == 1) for i in range(4)), (2, "ddp"), sp=True)],
}
FOUR_RANKS = [
    rc.Case(
        "sp_tp2_dp2_mixed",
        ((2, "zero3", False), (1, "zero2", False), (2, "ddp", True), (2, "zero2", False)),
        (2, "zero3"),
        sp=True,
    ),
    rc.Case("sp_tp2_pp2", tuple((2, "zero3", False) for _ in range(4)), (2, "ddp"), sp=True, pp=2, micro_batches=2),
]


def _two_rank_worker(rank: int, world: int) -> dict:
    return {family: rc.parallel_run(rank, world, family, cases) for family, cases in TWO_RANKS.items()}


def _assert_matches(results: list[dict], case: rc.Case, plain: dict, family: str) -> None:
    where = f"{family} {case.name}"
    assert results[0][case.name]["losses"] == pytest.approx(plain["losses"], rel=1e-5), where
    grads = rc.merged_grads(results, case.name)
    for step in (0, rc.STEPS - 1):
        for name, grad in plain["grads"][step].items():
            error = ((grads[step][name] - grad).norm() / grad.norm().clamp_min(1e-12)).item()
            assert error < 1e-5, f"{where} step {step} {name}: relative error {error:.2e}"


def test_sequence_parallel_tp2_matches_one_process():
    by_rank = run_distributed(_two_rank_worker, 2, timeout_s=600)
    for family, cases in TWO_RANKS.items():
        plain = rc.reference_run(family)
        for case in cases:
            _assert_matches([ranked[family] for ranked in by_rank], case, plain, family)


def test_sequence_parallel_with_dp_and_pipeline_matches_one_process():
    by_rank = run_distributed(rc.parallel_run, 4, "llama", FOUR_RANKS, timeout_s=600)
    plain = rc.reference_run("llama")
    for case in FOUR_RANKS:
        _assert_matches(by_rank, case, plain, "llama")

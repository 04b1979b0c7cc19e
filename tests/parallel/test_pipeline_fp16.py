"""fp16 with dynamic loss scaling under pipeline parallelism (pp = 2), CPU / gloo.

fp32 master weights with fp16 compute (FSDP2 ``MixedPrecisionPolicy``), as the other fp16 tests. The reference
is one process running the same tiny Llama the same way (an fp16 copy of the fp32 weights computes, gradients
go back to the fp32 weights) with a ``LossScaler`` of the same settings.

- PP2 GPipe, PP2 1F1B (4 micro-batches) on 2 ranks and PP2 x DDP2 1F1B on 4 ranks: the losses are the
  unscaled ones, and the unscaled gradients match the reference with the same scale and the reference without
  scaling (scale 1), within fp16 rounding; the scale grows identically on every rank.
- Overflow: a scale that overflows makes every rank skip the step, halve the scale and keep its parameters,
  also when only one rank sees inf in its own gradients (PP2 x ZeRO-2, a first batch whose labels are all one
  token: that token's row of the LM head gradient overflows, and only one rank holds that row); the next
  step then runs everywhere.
- Ranks holding different scales raise instead of unscaling by the wrong factor.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import runtime_cases as rc

from galvatron_hf.parallel.loss_scaling import LossScaler
from galvatron_hf.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed
FAMILY = "llama"
STEPS = 3
MICRO_BATCHES = 4
BLOCKS = tuple((1, "ddp", False) for _ in range(4))
SCALER = {"init_scale": 2.0**14, "growth_interval": 2}  # grows once within STEPS: the growth must agree too
UNSCALED = {"init_scale": 1.0, "growth_interval": 10**6}
OVERFLOW = {"init_scale": 2.0**40, "growth_interval": 10**6}
ONE_ROW_OVERFLOW = {"init_scale": 2.0**17, "growth_interval": 10**6}  # 2**16 does not overflow, 2**18 everywhere
ZERO2 = tuple((1, "zero2", False) for _ in range(4))
ONE_LABEL = 7


@dataclasses.dataclass(frozen=True)
class FP16Case:
    """One fp16 pipeline run: the layout, the schedule and the loss scaler's settings."""

    name: str
    schedule: str
    scaler: dict
    vocab: tuple[int, str] = (1, "ddp")
    blocks: tuple[tuple[int, str, bool], ...] = BLOCKS
    micro_batches: int = MICRO_BATCHES
    scale_offset: float = 1.0  # this rank's scale is multiplied by scale_offset ** rank (a mismatch case)
    one_label_first: bool = False  # step 0's labels are all ONE_LABEL (padding stays -100)

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        batch = rc.make_batch(FAMILY, step)
        if self.one_label_first and step == 0:
            batch["labels"] = torch.where(batch["labels"] == -100, -100, ONE_LABEL)
        return batch

    def plan(self, world: int):
        case = rc.Case(self.name, self.blocks, self.vocab, "fp16", pp=2, micro_batches=self.micro_batches)
        return dataclasses.replace(case.plan(world), schedule=self.schedule)


# ----- the single-process reference -----------------------------------------------------------------------
def reference_fp16_run(scaler_settings: dict, steps: int = STEPS) -> dict:
    """fp32 master weights, an fp16 copy computing forward and backward, a LossScaler, SGD: one process."""
    master = rc.make_model(FAMILY)
    compute = rc.make_model(FAMILY)
    compute_params = dict(compute.named_parameters())
    scaler = LossScaler(**scaler_settings)
    optimizer = torch.optim.SGD(master.parameters(), lr=rc.LR)
    losses, grads, scales, stepped = [], [], [], []
    for step in range(steps):
        with torch.no_grad():
            for name, param in master.named_parameters():  # parameters only: buffers (rotary) stay fp32
                compute_params[name].data = param.detach().to(torch.float16)
        loss = compute(**rc.make_batch(FAMILY, step)).loss.float()
        scaler.scale_loss(loss).backward()
        for name, param in master.named_parameters():
            param.grad = compute_params[name].grad.float()
            compute_params[name].grad = None
        scaler.unscale_(master.parameters())
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in master.named_parameters()})
        stepped.append(scaler.step(optimizer))
        scales.append(scaler.scale)
        optimizer.zero_grad()
    return {"losses": losses, "grads": grads, "scales": scales, "stepped": stepped}


# ----- the parallel run (one rank) ------------------------------------------------------------------------
def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def fp16_pipeline_run(rank: int, world: int, cases: list[FP16Case]) -> dict:
    """Train each case for STEPS steps; report losses, scales, skips, full gradients and parameter changes."""
    from galvatron_hf.adapters import describe_model
    from galvatron_hf.parallel import parallelize

    results = {}
    for case in cases:
        model = rc.make_model(FAMILY)
        spec = describe_model(model, seq_len=rc.SEQ)
        settings = dict(case.scaler, init_scale=case.scaler["init_scale"] * case.scale_offset**rank)
        pm = parallelize(model, case.plan(world), spec=spec, device="cpu", loss_scaler=LossScaler(**settings))
        optimizer = torch.optim.SGD(pm.parameters(), lr=rc.LR)
        record = {"losses": [], "grads": [], "scales": [], "stepped": [], "local_inf": [], "unchanged": []}
        try:
            for step in range(STEPS):
                local = rc.split_batch(case.batch(step), pm.data_rank, pm.data_size)
                record["losses"].append(pm.train_step(local).item())
                record["local_inf"].append(pm.scaler.local_found_inf)
                record["grads"].append({n: _full(p.grad) for n, p in pm.module.named_parameters()})
                before = [_local(p).detach().clone() for p in pm.parameters()]
                record["stepped"].append(pm.step(optimizer))
                record["unchanged"].append(all(torch.equal(b, _local(p)) for b, p in zip(before, pm.parameters())))
                record["scales"].append(pm.scaler.scale)
                optimizer.zero_grad()
        except RuntimeError as error:
            record["error"] = str(error)
        record["stage"] = pm.dims.stage
        record["first_of_stage"] = rank % (world // 2) == 0
        results[case.name] = record
    return results


# ----- checks ---------------------------------------------------------------------------------------------
def _merged(results: list[dict], name: str, step: int) -> dict:
    """The full gradients of step ``step``, merged over the stages' first ranks."""
    merged = {}
    for rank_result in results:
        if rank_result[name]["first_of_stage"]:
            merged.update(rank_result[name]["grads"][step])
    return merged


def _grad_error(got: dict, ref: dict) -> float:
    """Largest relative (norm) difference over all parameters; every reference parameter must be present."""
    assert set(got) == set(ref), set(got) ^ set(ref)
    return max(((got[n] - g).norm() / g.norm().clamp_min(1e-12)).item() for n, g in ref.items())


def _check_matches_reference(results: list[dict], name: str, scaled: dict, unscaled: dict) -> dict:
    errors = {"loss": 0.0, "grad_vs_scaled": 0.0, "grad_vs_unscaled": 0.0}
    for rank_result in results:
        got = rank_result[name]
        assert "error" not in got, got.get("error")
        assert got["stepped"] == scaled["stepped"], name
        assert got["scales"] == scaled["scales"], name  # same scale, grown at the same step, on every rank
        assert got["losses"] == pytest.approx(scaled["losses"], rel=1e-3), name
        errors["loss"] = max(errors["loss"], *(abs(a / b - 1) for a, b in zip(got["losses"], scaled["losses"])))
    for step in range(STEPS):
        grads = _merged(results, name, step)
        errors["grad_vs_scaled"] = max(errors["grad_vs_scaled"], _grad_error(grads, scaled["grads"][step]))
        if step == 0:  # after step 0 the two references train apart
            errors["grad_vs_unscaled"] = _grad_error(grads, unscaled["grads"][0])
    assert errors["grad_vs_scaled"] < 1e-2, (name, errors)
    assert errors["grad_vs_unscaled"] < 1e-2, (name, errors)
    return errors


def _check_overflow(results: list[dict], name: str, steps: int = STEPS) -> None:
    """Every rank skipped every step, kept its parameters and halved its scale each time."""
    expected = [OVERFLOW["init_scale"] * 0.5 ** (i + 1) for i in range(steps)]
    for rank, rank_result in enumerate(results):
        got = rank_result[name]
        assert "error" not in got, got.get("error")
        assert got["stepped"] == [False] * steps, (name, rank)
        assert got["unchanged"] == [True] * steps, (name, rank)
        assert got["scales"] == expected, (name, rank)
        assert all(math.isfinite(loss) and abs(loss) < 100 for loss in got["losses"]), (name, got["losses"])  # unscaled


@pytest.fixture(scope="module")
def references() -> dict:
    return {"scaled": reference_fp16_run(SCALER), "unscaled": reference_fp16_run(UNSCALED)}


def test_pp2_fp16_matches_single_process_and_skips_overflow(references):
    cases = [
        FP16Case("gpipe", "gpipe", SCALER),
        FP16Case("1f1b", "1f1b", SCALER),
        FP16Case("overflow", "1f1b", OVERFLOW),
    ]
    results = run_distributed(fp16_pipeline_run, 2, cases, timeout_s=600)
    assert references["scaled"]["scales"] == [2.0**14, 2.0**15, 2.0**15]  # the reference itself grows once
    for name in ("gpipe", "1f1b"):
        errors = _check_matches_reference(results, name, references["scaled"], references["unscaled"])
        print(name, errors)
    _check_overflow(results, "overflow")


def test_pp2_ddp2_fp16_matches_single_process_and_agrees_on_overflow(references):
    cases = [
        FP16Case("pp2_ddp2", "1f1b", SCALER, micro_batches=2),
        FP16Case("overflow", "1f1b", OVERFLOW, micro_batches=2),
        FP16Case("one_row", "1f1b", ONE_ROW_OVERFLOW, (1, "zero2"), ZERO2, micro_batches=2, one_label_first=True),
        FP16Case("mismatch", "gpipe", SCALER, micro_batches=2, scale_offset=2.0),
    ]
    results = run_distributed(fp16_pipeline_run, 4, cases, timeout_s=600)
    errors = _check_matches_reference(results, "pp2_ddp2", references["scaled"], references["unscaled"])
    print("pp2_ddp2", errors)
    _check_overflow(results, "overflow")

    one_row = [rank_result["one_row"] for rank_result in results]
    assert all("error" not in got for got in one_row), [got.get("error") for got in one_row]
    seen = [got["local_inf"][0] for got in one_row]
    assert seen.count(True) == 1, f"the scenario must overflow on exactly one rank, got {seen}"
    for got in one_row:  # every rank skipped step 0 and halved the scale, then stepped
        assert got["stepped"] == [False, True, True]
        assert got["unchanged"] == [True, False, False]
        assert got["scales"] == [2.0**16] * 3
        assert got["local_inf"][1:] == [False, False]

    for rank_result in results:
        assert "the fp16 loss scale differs across ranks" in rank_result["mismatch"].get("error", "")

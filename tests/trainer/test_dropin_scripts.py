"""HF-example-style scripts (``dropin_cases.main``) under GalvatronTrainer give the plain Trainer's results.

Each cell of the matrix (task x layout; tasks: causal LM, masked LM, sequence classification, seq2seq, image
classification) trains one epoch of 22 samples (global batch 8: a last step of 6), evaluates and predicts 7
samples (2 per data-parallel group: uneven last steps), saves, and resumes from the step-2 checkpoint in a
second run; its losses, eval / test losses and class predictions must equal the plain Trainer's (Seq2SeqTrainer's)
on one process (1e-4 relative). The references run after the launch and evaluate with each step size the runs
had, since a token loss's mean depends on the samples per step.

The default suite runs ``DEFAULT_CELLS`` on 2 gloo processes in one launch (every layout and every task at least
once). The whole matrix on 2 and on 4 processes is marked ``slow`` and runs only when selected:
``python -m pytest tests/trainer/test_dropin_scripts.py -m slow``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import dropin_cases as cases

from galvatron_hf.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed
RTOL = 1e-4
DEFAULT_CELLS = [
    ("causal_lm", "pp2_gpipe"),
    ("seq2seq", "zero3_accum2"),
    ("masked_lm", "tp2_zero3"),
    ("seq_cls", "pp2_1f1b"),
    ("seq_cls", "auto"),
    ("image_cls", "plain"),
]
ALL_CELLS = [(task, layout) for task in cases.TASKS for layout in cases.LAYOUTS]


def _references(results: dict, cells: list[tuple[str, str]], workdir: Path) -> dict:
    """The plain Trainer's run of each task, evaluated with the step sizes its cells had (known after the
    launch: ``--auto_parallel`` picks its own data-parallel size)."""
    sizes: dict[str, set[int]] = {}
    for task, layout in cells:
        sizes.setdefault(task, set()).add(results[f"{task}/{layout}"]["data_size"])
    return {task: cases.reference(task, str(workdir), tuple(sorted(sizes[task]))) for task in sorted(sizes)}


def _selected_slow(config: pytest.Config) -> bool:
    return "slow" in (config.getoption("markexpr") or "")


def _check_cell(result: dict, reference: dict, what: str) -> None:
    close = {"rtol": RTOL, "atol": 0}
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(reference["losses"]), **close, msg=what)
    torch.testing.assert_close(
        torch.tensor(result["resumed_losses"]), torch.tensor(reference["losses"]), **close, msg=f"{what} resumed"
    )
    expected = reference["by_data_size"][result["data_size"]]
    for key in ("eval_loss", "test_loss"):
        assert result[key] == pytest.approx(expected[key], rel=RTOL), f"{what} {key}"
    predictions = result["predictions"]  # class logits, one row per sample (token logits: padded per batch)
    if isinstance(predictions, np.ndarray) and predictions.ndim == 2:
        got, want = predictions, np.asarray(expected["predictions"])
        assert got.shape == want.shape == (cases.EVAL_SAMPLES, cases.NUM_LABELS), what
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-5, err_msg=what)


def _run_matrix(cells: list[tuple[str, str]], processes: int, workdir: Path, timeout_s: float) -> dict:
    results = run_distributed(cases.worker, processes, cells, str(workdir), timeout_s=timeout_s)
    references = _references(results[0], cells, workdir / "reference")
    for task, layout in cells:
        key = f"{task}/{layout}"
        for rank, rank_results in enumerate(results):
            _check_cell(rank_results[key], references[task], f"{key} on {processes} processes, rank {rank}")
    return results[0]


def test_scripts_match_the_plain_trainer_on_two_processes(tmp_path):
    results = _run_matrix(DEFAULT_CELLS, 2, tmp_path, timeout_s=1800)
    assert results["seq_cls/pp2_1f1b"]["plan"].pp == 2 and results["causal_lm/pp2_gpipe"]["plan"].pp == 2
    assert results["masked_lm/tp2_zero3"]["plan"].layers[0].tp == 2
    assert results["errors_shared"] == "rank 1: ValueError: a failure on rank 1 only"


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 4])
def test_the_whole_matrix(tmp_path, processes, request):
    if not _selected_slow(request.config):
        pytest.skip("the whole task x layout matrix runs with -m slow")
    _run_matrix(ALL_CELLS, processes, tmp_path, timeout_s=3600)

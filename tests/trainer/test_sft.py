"""GalvatronSFTTrainer vs TRL's plain single-process SFTTrainer on a tiny Llama: prompt-completion pairs with
TRL's dataset preparation (completion-only labels; packed padding-free rows in the packed runs); the logged loss,
entropy, mean_token_accuracy and num_tokens of every step and of evaluate() equal the reference's (1e-4 relative).

One 2-rank gloo launch: ZeRO-3, TP2, PP2 (batches padded to max_length), packing under ZeRO-3 with two accumulated
loader batches per step (TRL's metrics averaged over them) and under TP2 (packed evaluation sets too); the
evaluation set's last step holds filler samples on two data-parallel groups.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="the SFT tests need the trl extra: pip install galvatron-hf[trl]")

sys.path.insert(0, str(Path(__file__).parent))
import sft_cases as sc

from galvatron_hf.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed
RTOL = 1e-4


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sft")
    results = run_distributed(sc.worker, 2, list(sc.LAYOUTS), str(workdir), timeout_s=1200)
    keys = {sc.reference_key(layout) for layout in sc.LAYOUTS.values()}
    references = {key: sc.reference(str(workdir / f"ref_{key[0]}_{key[1]}"), *key) for key in keys}
    return results, references


@pytest.mark.parametrize("layout", list(sc.LAYOUTS))
def test_losses_and_trl_metrics_match_plain_sft_trainer(launch, layout):
    results, references = launch
    expected = references[sc.reference_key(sc.LAYOUTS[layout])]
    assert expected["train"][-1]["mean_token_accuracy"] > 0  # the metrics measure something
    assert expected["eval"]["eval_mean_token_accuracy"] > 0
    for rank, rank_results in enumerate(results):
        got = rank_results[layout]
        assert len(got["train"]) == len(expected["train"]) == sc.STEPS
        for step, (mine, theirs) in enumerate(zip(got["train"], expected["train"])):
            assert mine == pytest.approx(theirs, rel=RTOL), f"{layout} rank {rank} step {step + 1}"
        assert got["eval"] == pytest.approx(expected["eval"], rel=RTOL), f"{layout} rank {rank} evaluate()"


def test_config_keeps_trl_defaults(tmp_path):
    """Every SFTConfig field has TRL's default (bf16 on, learning rate 2e-5, ...), except gradient
    checkpointing, which is the plan's."""
    import dataclasses

    from trl import SFTConfig

    from galvatron_hf import GalvatronSFTConfig

    plain, ours = (config(output_dir=str(tmp_path), use_cpu=True) for config in (SFTConfig, GalvatronSFTConfig))
    checkpointing = {"gradient_checkpointing", "activation_checkpointing"}
    differing = {f.name for f in dataclasses.fields(SFTConfig) if getattr(plain, f.name) != getattr(ours, f.name)}
    assert differing == checkpointing and ours.bf16 and not ours.activation_checkpointing

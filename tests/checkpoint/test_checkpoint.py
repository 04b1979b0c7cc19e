"""save_checkpoint / load_checkpoint / export across layouts and world sizes, and crash safety.

Launches (each grouped, gloo, 1 thread per rank):
  A  4 ranks, TP2 x ZeRO-3 2: train 2 steps, save; a save that fails in the writer leaves it intact.
  C  1 rank, plain model: resume, then the process dies in the middle of a save to the same directory.
  B  2 ranks (after C's crash), FSDP2 (meta-initialised): resume; model, optimizer, scheduler, step, RNG
     equal; the next step matches A's. Then a 2-stage pipeline split (one stage per rank): resume, save
     again from the stages. T5 under FSDP2 saves a checkpoint for the export test.
Export (one process) of A's and the stages' checkpoints gives from_pretrained logits equal to A's model.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, LlamaForCausalLM, T5ForConditionalGeneration

from galvatron_hf.cli import main as cli_main
from galvatron_hf.checkpoint import CheckpointError, load_checkpoint, recover_interrupted_save, save_checkpoint
from galvatron_hf.checkpoint.manifest import MANIFEST_NAME
from galvatron_hf.planner.plan import LayerStrategy, Plan, VocabStrategy
from galvatron_hf.testing.distributed import DistributedRunError, run_distributed
from tests.checkpoint.test_checkpoint_hf_load import (
    apply_tp_fsdp,
    llama_config,
    prune_llama_to_stage,
    t5_config,
)

SAVED_STEP = 2
EXTRA = {"samples_seen": 8, "epoch": 0}


# ----- shared pieces -------------------------------------------------------------------------------------


def batch() -> torch.Tensor:
    return torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))


def make_plan(world_size: int, pp: int, tp: int, dp_type: str) -> Plan:
    dp = world_size // pp // tp
    layers = [LayerStrategy(stage=i * pp // 4, tp=tp, dp=dp, dp_type=dp_type) for i in range(4)]
    return Plan(
        world_size=world_size, pp=pp, schedule="gpipe", global_batch_size=4, num_micro_batches=1, layers=layers,
        vocab=VocabStrategy(tp=1, dp=world_size // pp, dp_type=dp_type),
    )  # fmt: skip


def make_optimizer(model: torch.nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)


def train_step(model, optimizer, scheduler, labels_key: str = "labels") -> float:
    ids = batch()
    loss = model(input_ids=ids, **{labels_key: ids}).loss
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return loss.item()


def full_states(model, optimizer) -> tuple[dict, dict]:
    """Model and optimizer state as full tensors on every rank (keys: HF names; optimizer flattened by name)."""
    options = StateDictOptions(full_state_dict=True, flatten_optimizer_state_dict=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    return _snapshot(model_state), _snapshot(optim_state)


def _snapshot(state: dict) -> dict:
    """Copies: some entries (AdamW's "step") are the live optimizer tensors, which later steps change."""
    return {key: v.detach().clone() if isinstance(v, torch.Tensor) else v for key, v in state.items()}


def logits_of(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch()).logits.detach().clone()


def reset_rotary_buffers(model: LlamaForCausalLM) -> None:
    rotary = model.model.rotary_emb
    inv_freq, _ = rotary.compute_default_rope_parameters(model.config)
    with torch.no_grad():
        rotary.inv_freq.copy_(inv_freq)
        rotary.original_inv_freq.copy_(inv_freq)


def rng_draws() -> list[float]:
    return [random.random(), torch.rand(1).item()]


def differing(ours: dict, reference: dict) -> list[str]:
    wrong = []
    for key, value in ours.items():
        # a tied weight's optimizer state is filed under the name its holder sees (lm_head on a last stage)
        expected = reference[key] if key in reference else reference[key.replace(".lm_head.", ".model.embed_tokens.")]
        same = torch.equal(value, expected) if isinstance(value, torch.Tensor) else value == expected
        if not same:
            wrong.append(key)
    return wrong


# ----- launch A: TP2 x ZeRO-3 2 on 4 ranks -----------------------------------------------------------------


def _train_save_and_fail_a_save(rank: int, world_size: int, ckpt: str) -> dict:
    torch.manual_seed(0)
    model = apply_tp_fsdp(LlamaForCausalLM(llama_config()), tp=2, dp=2)
    optimizer, scheduler = make_optimizer(model)
    for _ in range(SAVED_STEP):
        train_step(model, optimizer, scheduler)
    random.seed(100 + rank)
    torch.manual_seed(200 + rank)
    plan = make_plan(4, pp=1, tp=2, dp_type="zero3")
    save_checkpoint(
        ckpt, model=model, optimizer=optimizer, lr_scheduler=scheduler, plan=plan, step=SAVED_STEP, extra=EXTRA
    )
    draws = rng_draws()
    model_state, optim_state = full_states(model, optimizer)
    logits = logits_of(model)
    model.train()
    train_step(model, optimizer, scheduler)
    next_model_state, _ = full_states(model, optimizer)

    def failing_write(self, plan, planner):
        if dist.get_rank() == 1:
            raise OSError("disk full (simulated)")
        return original_write(self, plan, planner)

    original_write = FileSystemWriter.write_data
    with mock.patch.object(FileSystemWriter, "write_data", failing_write):
        try:
            save_checkpoint(ckpt, model=model, optimizer=optimizer, lr_scheduler=scheduler, plan=plan, step=3)
            failure = None
        except CheckpointError as err:
            failure = str(err)
    step_on_disk = json.loads((Path(ckpt) / MANIFEST_NAME).read_text())["step"]
    result = {"failure": failure, "step_on_disk": step_on_disk, "draws": draws}
    if rank == 0:
        result.update(model=model_state, optim=optim_state, logits=logits, next_model=next_model_state)
    return result


# ----- launch B: FSDP2 on 2 ranks, meta-initialised; plus a T5 checkpoint --------------------------------------


def _resume_in_fsdp2_and_in_stages(rank: int, world_size: int, ckpt: str, t5_ckpt: str, stage_ckpt: str) -> dict:
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config())
    apply_tp_fsdp(model, tp=1, dp=2)
    model.to_empty(device="cpu")
    optimizer, scheduler = make_optimizer(model)
    state = load_checkpoint(
        ckpt, model=model, optimizer=optimizer, lr_scheduler=scheduler, plan=make_plan(2, 1, 1, "zero3")
    )
    draws = rng_draws()
    model_state, optim_state = full_states(model, optimizer)
    lr_after_load = [group["lr"] for group in optimizer.param_groups]
    scheduler_epoch = scheduler.last_epoch
    model.train()
    reset_rotary_buffers(model)  # not in any checkpoint: a meta-initialised model must recompute them
    train_step(model, optimizer, scheduler)
    next_model_state, _ = full_states(model, optimizer)

    stages = _resume_in_pipeline_stages(rank, ckpt, stage_ckpt)
    stages["mismatch"] = _load_into_a_stage_the_checkpoint_lacks(rank, ckpt)

    torch.manual_seed(5)
    t5 = apply_tp_fsdp(T5ForConditionalGeneration(t5_config()), tp=1, dp=2)
    t5_optimizer, t5_scheduler = make_optimizer(t5)
    train_step(t5, t5_optimizer, t5_scheduler)
    save_checkpoint(t5_ckpt, model=t5, optimizer=t5_optimizer, lr_scheduler=t5_scheduler, plan=None, step=1)
    t5.eval()
    with torch.no_grad():
        t5_logits = t5(input_ids=batch(), decoder_input_ids=batch()).logits
    result = {"state": state, "draws": draws, "lr": lr_after_load, "scheduler_epoch": scheduler_epoch, "stage": stages}
    if rank == 0:
        result.update(model=model_state, optim=optim_state, next_model=next_model_state, t5_logits=t5_logits)
    return result


# ----- launch C: one plain process, killed in the middle of a save ------------------------------------------------


def _resume_plain_then_die_mid_save(rank: int, world_size: int, ckpt: str, report: str) -> None:
    model = LlamaForCausalLM(llama_config())
    optimizer, scheduler = make_optimizer(model)
    state = load_checkpoint(ckpt, model=model, optimizer=optimizer, lr_scheduler=scheduler)
    torch.save({"state": state, "states": full_states(model, optimizer)}, report)

    def dying_write(self, plan, planner):
        Path(self.path, "__0_0.distcp").write_bytes(b"half a shard")
        os._exit(9)  # the process is killed while its shards are half written

    with mock.patch.object(FileSystemWriter, "write_data", dying_write):
        save_checkpoint(ckpt, model=model, optimizer=optimizer, lr_scheduler=scheduler, plan=None, step=99)


def _resume_in_pipeline_stages(rank: int, ckpt: str, stage_ckpt: str) -> dict:
    """Each of the 2 ranks is one stage of a 2-stage split (plain parameters); then the stages save."""
    model = prune_llama_to_stage(LlamaForCausalLM(llama_config()), stage=rank, num_stages=2)
    optimizer, scheduler = make_optimizer(model)
    state = load_checkpoint(ckpt, model=model, optimizer=optimizer, lr_scheduler=scheduler)
    model_state, optim_state = full_states(model, optimizer)
    plan = make_plan(2, pp=2, tp=1, dp_type="ddp")
    save_checkpoint(stage_ckpt, model=model, optimizer=optimizer, lr_scheduler=scheduler, plan=plan, step=state.step)
    return {"state": state, "model": model_state, "optim": optim_state}


def _load_into_a_stage_the_checkpoint_lacks(rank: int, ckpt: str) -> str | None:
    """6 blocks split 3 + 3: stage 0's blocks are in the 4-block checkpoint, stage 1's blocks 4 and 5 are not.
    Only rank 1 finds entries missing; rank 0 must raise too instead of waiting in the collective load."""
    config = llama_config()
    config.num_hidden_layers = 6
    model = prune_llama_to_stage(LlamaForCausalLM(config), stage=rank, num_stages=2)
    try:
        load_checkpoint(ckpt, model=model, optimizer=None, restore_rng=False)
    except CheckpointError as err:
        return str(err)
    return None


# ----- the runs, once per module -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("checkpoints")
    ckpt, t5_ckpt, stage_ckpt = root / "llama", root / "t5", root / "llama_from_stages"
    outcome: dict = {"root": root, "ckpt": ckpt, "t5_ckpt": t5_ckpt, "stage_ckpt": stage_ckpt}
    outcome["A"] = run_distributed(_train_save_and_fail_a_save, 4, str(ckpt), timeout_s=240)
    report = root / "plain_report.pt"
    with pytest.raises(DistributedRunError, match="exited without a result"):
        run_distributed(_resume_plain_then_die_mid_save, 1, str(ckpt), str(report), timeout_s=240)
    outcome["C"] = torch.load(report, weights_only=False)
    outcome["leftovers"] = [p.name for p in root.glob(".llama.tmp-*") if not (p / MANIFEST_NAME).exists()]
    outcome["step_after_kill"] = json.loads((ckpt / MANIFEST_NAME).read_text())["step"]
    args = (str(ckpt), str(t5_ckpt), str(stage_ckpt))
    outcome["B"] = run_distributed(_resume_in_fsdp2_and_in_stages, 2, *args, timeout_s=240)
    return outcome


@pytest.mark.distributed
def test_a_failing_save_raises_on_every_rank_and_keeps_the_checkpoint(runs):
    for rank, result in enumerate(runs["A"]):
        assert result["failure"] and "disk full (simulated)" in result["failure"], f"rank {rank}: {result['failure']}"
        assert result["step_on_disk"] == SAVED_STEP


@pytest.mark.distributed
def test_resume_in_fsdp2_on_two_ranks_restores_everything(runs):
    saved = runs["A"][0]
    resumed = runs["B"]
    assert differing(resumed[0]["model"], saved["model"]) == []
    assert set(resumed[0]["optim"]) == set(saved["optim"])
    assert differing(resumed[0]["optim"], saved["optim"]) == []
    for result in resumed:
        state = result["state"]
        assert (state.step, state.extra, state.saved_world_size) == (SAVED_STEP, EXTRA, 4)
        assert state.plan == make_plan(4, pp=1, tp=2, dp_type="zero3")
        assert state.scheduler_restored and result["scheduler_epoch"] == SAVED_STEP
        assert result["lr"] == [pytest.approx(1e-2 * 0.5**SAVED_STEP)]
        # another world size: every rank continues from rank 0's generators
        assert state.rng == "rank0" and result["draws"] == runs["A"][0]["draws"]


@pytest.mark.distributed
def test_training_continues_identically_after_resuming_in_another_layout(runs):
    expected, got = runs["A"][0]["next_model"], runs["B"][0]["next_model"]
    for key, value in got.items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.distributed
def test_a_process_killed_mid_save_leaves_the_previous_checkpoint(runs):
    assert runs["step_after_kill"] == SAVED_STEP
    assert runs["leftovers"], "the killed save should have left its unsealed staging folder"
    plain = runs["C"]
    assert plain["state"].rng == "rank0" and plain["state"].step == SAVED_STEP
    model_state, optim_state = plain["states"]
    assert differing(model_state, runs["A"][0]["model"]) == []
    assert differing(optim_state, runs["A"][0]["optim"]) == []


@pytest.mark.distributed
def test_resume_in_a_pipeline_split_gets_each_stage_its_part(runs):
    saved = runs["A"][0]
    stage0, stage1 = (result["stage"] for result in runs["B"])
    assert "model.embed_tokens.weight" in stage0["model"] and "lm_head.weight" in stage1["model"]
    assert set(stage0["model"]) | set(stage1["model"]) == set(saved["model"])
    for stage in (stage0, stage1):
        assert stage["state"].step == SAVED_STEP
        assert differing(stage["model"], saved["model"]) == []
        assert stage["optim"] and differing(stage["optim"], saved["optim"]) == []
    assert "lacks" in stage1["mismatch"] and "model.layers.4." in stage1["mismatch"]
    assert stage0["mismatch"].startswith("rank 1 cannot load") and "lacks" in stage0["mismatch"]
    stage_ckpt = runs["stage_ckpt"]
    assert json.loads((stage_ckpt / MANIFEST_NAME).read_text())["world_size"] == 2


@pytest.mark.distributed
@pytest.mark.parametrize("which", ["ckpt", "stage_ckpt"])
def test_export_gives_from_pretrained_the_trained_logits(runs, which, capsys):
    out = runs["root"] / f"exported_{which}"
    assert cli_main(["export", str(runs[which]), str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(model, LlamaForCausalLM) and model.lm_head.weight is model.model.embed_tokens.weight
    torch.testing.assert_close(logits_of(model), runs["A"][0]["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.distributed
def test_export_t5_and_dtype(runs):
    out = runs["root"] / "exported_t5"
    assert cli_main(["export", str(runs["t5_ckpt"]), str(out)]) == 0
    model = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(input_ids=batch(), decoder_input_ids=batch()).logits
    torch.testing.assert_close(logits, runs["B"][0]["t5_logits"], rtol=1e-5, atol=1e-5)
    half = runs["root"] / "exported_t5_bf16"
    assert cli_main(["export", str(runs["t5_ckpt"]), str(half), "--dtype", "bfloat16"]) == 0
    assert AutoModelForSeq2SeqLM.from_pretrained(half, dtype="auto").shared.weight.dtype == torch.bfloat16


@pytest.mark.distributed
def test_export_of_a_checkpoint_without_config_takes_the_architecture_from_a_flag(runs, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(runs["ckpt"], bare)
    config_file = tmp_path / "config.json"
    shutil.move(bare / "config.json", config_file)
    assert cli_main(["export", str(bare), str(tmp_path / "no_flag")]) == 1
    assert "--config" in capsys.readouterr().err
    assert cli_main(["export", str(bare), str(tmp_path / "by_file"), "--config", str(config_file)]) == 0
    assert cli_main(["export", str(bare), str(tmp_path / "by_dir"), "--model_name_or_path", str(tmp_path)]) == 0
    for out in ("by_file", "by_dir"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / out)
        torch.testing.assert_close(logits_of(model), runs["A"][0]["logits"], rtol=1e-5, atol=1e-5)


# ----- single process: recovery and error messages ----------------------------------------------------------------


def test_interrupted_swap_is_finished_on_load(runs, tmp_path):
    older = tmp_path / ".c.old-aaaa"
    newer = tmp_path / ".c.tmp-bbbb"
    shutil.copytree(runs["ckpt"], older)
    shutil.copytree(runs["stage_ckpt"], newer)  # sealed: it has its manifest
    target = tmp_path / "c"
    assert recover_interrupted_save(target)
    assert json.loads((target / MANIFEST_NAME).read_text())["world_size"] == 2  # the newer one won
    assert older.exists()  # never deleted by recovery


def test_missing_or_corrupt_checkpoints_name_the_path(runs, tmp_path):
    model = LlamaForCausalLM(llama_config())
    optimizer, scheduler = make_optimizer(model)
    with pytest.raises(CheckpointError, match=f"no checkpoint at {tmp_path / 'absent'}"):
        load_checkpoint(tmp_path / "absent", model=model, optimizer=optimizer)
    broken = tmp_path / "broken"
    shutil.copytree(runs["ckpt"], broken)
    (broken / "dcp" / ".metadata").unlink()
    with pytest.raises(CheckpointError, match=r"broken.*\.metadata is missing"):
        load_checkpoint(broken, model=model, optimizer=optimizer)
    (broken / MANIFEST_NAME).unlink()
    with pytest.raises(CheckpointError, match=r"broken is not a complete .*checkpoint\.json is missing"):
        load_checkpoint(broken, model=model, optimizer=optimizer)
    truncated = tmp_path / "truncated"
    shutil.copytree(runs["stage_ckpt"], truncated)
    for shard in (truncated / "dcp").glob("*.distcp"):
        shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"truncated.*corrupt or truncated"):
        load_checkpoint(truncated, model=model, optimizer=optimizer)
    assert cli_main(["export", str(broken), str(tmp_path / "out")]) == 1


def test_saving_over_a_foreign_directory_is_refused(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    model = LlamaForCausalLM(llama_config())
    optimizer, _ = make_optimizer(model)
    with pytest.raises(CheckpointError, match="not a galvatron_hf checkpoint"):
        save_checkpoint(foreign, model=model, optimizer=optimizer, plan=None, step=0)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "new", model=model, optimizer=optimizer, plan=None, step=0, extra={"x": object()})


def test_a_successful_save_replaces_the_old_one_and_clears_crashed_leftovers(tmp_path):
    model = LlamaForCausalLM(llama_config())
    optimizer, scheduler = make_optimizer(model)
    target = tmp_path / "ckpt"
    save_checkpoint(target, model=model, optimizer=optimizer, lr_scheduler=scheduler, plan=None, step=1)
    (tmp_path / ".ckpt.tmp-crashed").mkdir()  # what a save killed midway leaves
    train_step(model, optimizer, scheduler)
    save_checkpoint(target, model=model, optimizer=optimizer, lr_scheduler=scheduler, plan=None, step=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    fresh = LlamaForCausalLM(llama_config())
    fresh_optimizer, fresh_scheduler = make_optimizer(fresh)
    state = load_checkpoint(target, model=fresh, optimizer=fresh_optimizer, lr_scheduler=fresh_scheduler)
    assert state.step == 2 and state.rng == "per-rank" and state.plan is None
    assert differing(full_states(fresh, fresh_optimizer)[0], full_states(model, optimizer)[0]) == []

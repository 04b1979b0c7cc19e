"""Every plan input is honoured or refused with a message naming the fix (issue: nothing silent).

Pure Python, no torch.distributed: counts, budgets, node counts, plan sources, plan precision, plan-file
fields (types, keys that are never defaulted), a model profile of another model, hardware files that are
not objects, and what the search writes.
"""

from __future__ import annotations

import json
import math

import pytest

from galvatron_hf.cli import main as cli_main
from galvatron_hf.planner.plan import Plan, PlanError
from galvatron_hf.planner.request import PlanRequest, resolve_plan
from galvatron_hf.planner.search import search_plan
from galvatron_hf.profiler.builtin_hardware import hardware_for
from galvatron_hf.profiler.hardware_schema import HardwareProfile, HardwareProfileError
from galvatron_hf.profiler.model_schema import ModelProfileError
from tests.profiler.test_profiled_costs import LLAMA, hand_profile, llama_spec


@pytest.fixture
def spec(spec_factory):
    return spec_factory(seq=16, hidden=256, ffn=512, heads=4, vocab=128)


@pytest.fixture
def plan_file(tmp_path, spec):
    plan = resolve_plan(PlanRequest(world_size=4, per_device_batch_size=2, mixed_precision="bf16"), spec).plan
    return plan.save(tmp_path / "plan.json")


def _edited(path, edit) -> str:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return str(path)


# ----- 3: the plan's precision ------------------------------------------------------------------------------
def test_a_plan_made_for_bf16_is_refused_for_an_fp32_run(plan_file, spec):
    with pytest.raises(PlanError, match=r"made for bf16 and this run trains in fp32 .*pass --bf16"):
        resolve_plan(PlanRequest(galvatron_plan=str(plan_file), world_size=4, mixed_precision="fp32"), spec)
    plan = Plan.load(plan_file)
    with pytest.raises(PlanError, match="given plan was made for bf16 and this run trains in fp16"):
        resolve_plan(PlanRequest(world_size=4, mixed_precision="fp16"), spec, plan=plan)
    honoured = resolve_plan(PlanRequest(galvatron_plan=str(plan_file), world_size=4, mixed_precision="bf16"), spec)
    assert honoured.plan.mixed_precision == "bf16"


# ----- 4: --num_nodes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("devices", "nodes", "why"),
    [(4, 8, "at least one"), (16, 3, "divisor of 16"), (16, 1, "a h100 node holds 8 GPUs")],
)
def test_impossible_node_counts_are_refused(spec, devices, nodes, why):
    with pytest.raises(ValueError, match=why):
        resolve_plan(PlanRequest(world_size=devices, num_nodes=nodes), spec)


def test_a_possible_node_count_is_accepted(spec):
    assert resolve_plan(PlanRequest(world_size=16, num_nodes=2), spec).hardware.num_nodes == 2


# ----- 5: budgets -------------------------------------------------------------------------------------------
def test_a_budget_above_the_card_is_refused(spec):
    with pytest.raises(ValueError, match=r"--memory_gb 800 is more than the .*H100.* \(80 GB\); give at most 80"):
        resolve_plan(PlanRequest(world_size=8, memory_gb=800), spec)
    for budget in (math.nan, math.inf, -1.0):
        with pytest.raises(ValueError, match="--memory_gb must be a number of GB > 0"):
            resolve_plan(PlanRequest(world_size=8, memory_gb=budget), spec)


# ----- 6: a model profile of another model --------------------------------------------------------------------
def test_a_profile_of_another_model_is_refused(tmp_path):
    from galvatron_hf.adapters import config_from_dict, describe_model

    _, spec = llama_spec()
    profile = hand_profile(spec).save(tmp_path / "llama.json")
    other = describe_model(config_from_dict({**LLAMA, "hidden_size": 128}), seq_len=32)
    with pytest.raises(ModelProfileError, match=r"measured .* not .*profile this model with `galvatron-hf profile"):
        resolve_plan(PlanRequest(world_size=1, profile=str(profile), mixed_precision="fp32"), other)
    own = resolve_plan(PlanRequest(world_size=1, profile=str(profile), mixed_precision="fp32"), spec)
    assert own.plan.predicted.source == "profiled"


# ----- 8: plan fields of the wrong type, hardware that is not an object ---------------------------------------
@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda d: d["layers"][1].update(tp="2"), r"plan.layers\[1\].tp must be an integer, got '2'"),
        (lambda d: d["layers"][0].update(checkpoint="yes"), r"plan.layers\[0\].checkpoint must be true or false"),
        (lambda d: d["layers"][0].update(dp_type="fsdp"), r"plan.layers\[0\].dp_type must be one of \['ddp'"),
        (lambda d: d.update(global_batch_size=8.5), "plan.global_batch_size must be an integer, got 8.5"),
        (lambda d: d["vocab"].update(dp=True), "plan.vocab.dp must be an integer, got True"),
    ],
)
def test_plan_fields_of_the_wrong_type_are_named(plan_file, edit, named):
    with pytest.raises(PlanError, match=named):
        Plan.load(_edited(plan_file, edit))


def test_a_hardware_file_holding_a_list_is_refused(tmp_path):
    path = tmp_path / "hw.json"
    path.write_text("[1, 2]")
    with pytest.raises(HardwareProfileError, match="must hold a JSON object, got list"):
        hardware_for(str(path), 8)
    assert isinstance(hardware_for("h100", 8), HardwareProfile)


# ----- 9: never defaulted or dropped silently ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda d: d["layers"][2].pop("dp_type"), r"plan.layers\[2\] is missing required keys \['dp_type'\]"),
        (lambda d: d.pop("vocab"), r"plan is missing required keys \['vocab'\]"),
        (lambda d: d["vocab"].pop("tp"), r"plan.vocab is missing required keys \['tp'\]"),
        (lambda d: d.pop("mixed_precision"), r"plan is missing required keys \['mixed_precision'\]"),
    ],
)
def test_plan_keys_are_never_defaulted(plan_file, edit, named):
    with pytest.raises(PlanError, match=named):
        Plan.load(_edited(plan_file, edit))


@pytest.mark.parametrize(
    "others", [{"auto_parallel": True}, {"pp": 2}, {"dp_type": "zero3"}, {"checkpoint": True}, {"schedule": "gpipe"}]
)
def test_a_plan_file_with_another_plan_source_is_refused(plan_file, spec, others):
    flag = f"--{next(iter(others))}"
    with pytest.raises(ValueError, match=rf"is the whole plan; {flag} would be ignored"):
        resolve_plan(PlanRequest(galvatron_plan=str(plan_file), world_size=4, **others), spec)


@pytest.mark.parametrize("flag", ["--num_micro_batches", "--max_global_batch_size", "--global_batch_size", "--num_gpus"])
def test_zero_counts_are_refused_on_the_command_line(flag, capsys):
    argv = ["search", "--model_name_or_path", "meta-llama/Llama-2-7b-hf", "--num_gpus", "8", flag, "0"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert flag in err and "must be >= 1, got 0" in err


@pytest.mark.parametrize("world", [2, 4, 8])
def test_the_search_never_writes_a_1f1b_plan_training_refuses(spec, world):
    hardware = hardware_for("h100", world)
    result = search_plan(spec, hardware, world, 40.0, mixed_precision="bf16")
    for candidate in [result.best, *getattr(result, "baselines", {}).values()]:
        plan = getattr(candidate, "plan", None)
        if plan is None:
            continue
        plan.validate(world_size=world, spec=spec)  # what the trainer checks before sharding
        if plan.schedule == "1f1b":
            assert plan.num_micro_batches >= plan.pp


# ----- 7: the comparison table, and a pipeline with one micro-batch ----------------------------------------------
def test_plain_baselines_try_their_own_batches_before_saying_none_fits():
    from galvatron_hf.adapters import describe_model

    spec = describe_model("meta-llama/Llama-2-7b-hf")
    result = resolve_plan(PlanRequest(auto_parallel=True, world_size=3), spec).search
    zero3, ddp = result.baselines["zero3"], result.baselines["ddp"]
    assert zero3 is not None and zero3.report.fits(result.memory_gb), "ZeRO-3 fits with 1 sample per GPU"
    assert zero3.plan.global_batch_size % 3 == 0 and zero3.report.peak_memory_gb == pytest.approx(57.5, abs=0.5)
    assert ddp is not None and not ddp.report.fits(result.memory_gb)  # the table says how much it needs


def test_a_pipeline_with_fewer_micro_batches_than_stages_says_why_it_is_slow(spec):
    from galvatron_hf.planner.summary import format_summary

    one = resolve_plan(PlanRequest(pp=2, world_size=8), spec)
    assert one.plan.num_micro_batches == 1
    assert "note: pp=2 with 1 micro-batch(es): each stage waits for the others 50% of the step" in format_summary(one)
    enough = resolve_plan(PlanRequest(pp=2, num_micro_batches=2, world_size=8), spec)
    assert enough.notes == ()

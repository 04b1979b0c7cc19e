import json

import pytest

from galvatron_hf.planner.plan import LayerStrategy, Plan, PlanError, Predicted, VocabStrategy


def make_plan(**overrides):
    layers = [LayerStrategy(stage=i // 2, tp=2, dp=2, dp_type="zero3", checkpoint=i == 0) for i in range(4)]
    kwargs = dict(
        world_size=8,
        pp=2,
        schedule="1f1b",
        global_batch_size=16,
        num_micro_batches=4,
        layers=layers,
        vocab=VocabStrategy(tp=2, dp=2, dp_type="zero3"),
        seq_len=128,
        predicted=Predicted(step_time_s=1.0, samples_per_s=16.0, tokens_per_s=2048.0, peak_memory_gb=[3.0, 2.5]),
    )
    kwargs.update(overrides)
    return Plan(**kwargs)


def test_round_trip_keeps_every_field(tmp_path):
    plan = make_plan()
    path = plan.save(tmp_path / "plan.json")
    data = json.loads(path.read_text())
    assert data["version"] == 2
    assert list(data)[0] == "version"
    assert Plan.load(path) == plan
    assert plan.stage_sizes == [2, 2]
    assert plan.micro_batch_size == 4


def test_valid_plan_passes():
    make_plan().validate(world_size=8)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(pp=3), "divide world_size"),
        (dict(num_micro_batches=3), "not divisible by num_micro_batches"),
        (dict(schedule="zigzag"), "schedule"),
        (dict(layers=[LayerStrategy(stage=0, tp=4, dp=2)] * 2 + [LayerStrategy(stage=1, tp=2, dp=2)] * 2), "tp=4 x dp=2"),
        (dict(layers=[LayerStrategy(stage=1, tp=2, dp=2)] * 2 + [LayerStrategy(stage=0, tp=2, dp=2)] * 2), "non-decreasing"),
        (dict(layers=[LayerStrategy(stage=0, tp=2, dp=2, dp_type="zero4")] + [LayerStrategy(stage=1, tp=2, dp=2)] * 3), "dp_type"),
        (dict(global_batch_size=4, num_micro_batches=4), "does not split over dp=2"),
        (dict(cp=3), "cp=3 must be >= 1 and divide"),
        (dict(cp=2), "tp=2 x dp=2 must equal the devices per stage \\(world_size / pp / cp = 2\\)"),
        (dict(seq_len=102, cp=2, layers=[LayerStrategy(stage=i // 2, tp=2, dp=1) for i in range(4)],
              vocab=VocabStrategy(tp=2, dp=1)), "multiple of 4"),
        (dict(layers=[LayerStrategy(stage=i // 2, tp=1, dp=4, sp=True) for i in range(4)]), "sp shards the sequence"),
        (dict(seq_len=129, layers=[LayerStrategy(stage=i // 2, tp=2, dp=2, sp=True) for i in range(4)]), "tp divides"),
        (dict(offload=["params"]), "together"),
        (dict(offload=["weights"]), "not among"),
    ],
)
def test_invalid_plans_name_the_problem(overrides, message):
    with pytest.raises(PlanError, match=message):
        make_plan(**overrides).validate()


def test_world_size_mismatch_names_the_fix():
    with pytest.raises(PlanError, match="--nproc_per_node 8"):
        make_plan().validate(world_size=4)


def test_loading_rejects_other_versions_and_unknown_keys():
    data = make_plan().to_dict()
    with pytest.raises(PlanError, match="version"):
        Plan.from_dict({**data, "version": 3})
    with pytest.raises(PlanError, match="unknown keys"):
        Plan.from_dict({**data, "colour": "blue"})
    bad_layer = dict(data, layers=[{"stage": 0, "tp": 1, "dp": 8, "zero": True}])
    with pytest.raises(PlanError, match="unknown keys"):
        Plan.from_dict(bad_layer)
    with pytest.raises(PlanError, match="not valid JSON"):
        Plan.from_json("{")


def test_the_same_problem_on_many_layers_is_one_line():
    layers = [LayerStrategy(stage=0, tp=4, dp=1)] * 6
    plan = make_plan(world_size=2, pp=1, layers=layers, vocab=VocabStrategy(tp=2, dp=1), global_batch_size=4,
                     num_micro_batches=1)
    with pytest.raises(PlanError) as raised:
        plan.validate()
    message = str(raised.value)
    assert "layers 0-5: tp=4 x dp=1 must equal the devices per stage" in message
    assert message.count("must equal the devices per stage") == 1


def test_version_1_files_read_unchanged_and_version_2_keys_round_trip(tmp_path):
    v1 = make_plan().to_dict()
    v1["version"] = 1
    v1.pop("cp"), v1.pop("offload")
    for layer in v1["layers"]:
        layer.pop("sp"), layer.pop("dp_shard")
    v1["vocab"].pop("dp_shard")
    assert Plan.from_dict(v1) == make_plan()  # no sp, cp 1, no offload
    with pytest.raises(PlanError, match=r"version 1 but holds version-2 keys \['cp'\]"):
        Plan.from_dict({**v1, "cp": 2})
    with pytest.raises(PlanError, match=r"layers\[\]\.sp"):
        Plan.from_dict({**v1, "layers": [{**layer, "sp": True} for layer in v1["layers"]]})
    plan = make_plan(
        cp=2,
        layers=[LayerStrategy(stage=i // 2, tp=2, dp=1, sp=True) for i in range(4)],
        vocab=VocabStrategy(tp=2, dp=1),
        global_batch_size=8,
        offload=["params", "grads", "optimizer"],
    )
    plan.validate(world_size=8)
    assert Plan.load(plan.save(tmp_path / "v2.json")) == plan

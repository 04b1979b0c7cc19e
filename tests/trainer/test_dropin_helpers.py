"""Fast checks (no launch) of what makes GalvatronTrainer a drop-in for HF scripts: the signature columns of a
pipeline stage, partial batches (fillers, uneven and padded micro-batches), the optimizers refused up front,
the hardware the trainer detects, and a search that never proposes pipeline stages the runtime refuses."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from galvatron_hf.adapters import describe_model
from galvatron_hf.parallel.families import max_pipeline_degree
from galvatron_hf.parallel.pipeline_parallel import prune_to_stage
from galvatron_hf.parallel.pipeline_stages import pad_rows, split_rows
from galvatron_hf.planner.plan import LayerStrategy, Plan
from galvatron_hf.planner.search.space import step_configs
from galvatron_hf.profiler import builtin_hardware
from galvatron_hf.trainer import signature_columns
from galvatron_hf.training.batching import BatchSizeError, LoaderFillers, mask_filler_labels, round_in_epoch
from galvatron_hf.training.optimizer import SHARDED_OPTIMIZERS, check_optimizer


def tiny_bert(head=tf.BertForSequenceClassification):
    config = tf.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=16)  # fmt: skip
    return head(config)


def test_a_pipeline_stage_keeps_the_hf_signature_columns():
    model = tiny_bert()
    plan = Plan(world_size=2, pp=2, schedule="gpipe", global_batch_size=2, num_micro_batches=2,
                layers=[LayerStrategy(0, 1, 1), LayerStrategy(1, 1, 1)], mixed_precision="fp32")  # fmt: skip
    prune_to_stage(model, describe_model(model), plan, 0)
    assert "input_ids" not in signature_columns(model.forward, None)  # the stage forward the Trainer would see
    columns = signature_columns(type(model).forward, ["labels"])
    assert {"input_ids", "attention_mask", "token_type_ids", "labels", "label", "label_ids"} <= set(columns)


def test_fillers_are_the_rows_past_the_dataset_end():
    # 11 samples, 2 per loader batch, 2 groups: group 1's third batch is [10, filler]
    group0, group1 = LoaderFillers(11, 2, 0, 2), LoaderFillers(11, 2, 1, 2)
    assert [group0.real_rows(r, 2) for r in range(3)] == [2, 2, 2]
    assert [group1.real_rows(r, 2) for r in range(3)] == [2, 2, 1]
    assert LoaderFillers(None, 2, 1, 2).real_rows(5, 2) == 2  # an unsized iterable: all real
    # 6 loader batches per epoch, 4 per step: steps of 4 and 2 batches
    assert [round_in_epoch(step, pending, 6, 4) for step, pending in [(0, 0), (0, 3), (1, 1), (2, 0), (3, 1)]] == [
        0, 3, 5, 0, 5,
    ]


def test_filler_labels_are_left_out_and_float_labels_refused():
    batch = {"input_ids": torch.ones(3, 2, dtype=torch.long), "labels": torch.tensor([1, 2, 0])}
    assert mask_filler_labels(batch, 2)["labels"].tolist() == [1, 2, -100]
    assert mask_filler_labels(batch, 3) is batch
    with pytest.raises(BatchSizeError, match="dataloader_drop_last=True"):
        mask_filler_labels({"labels": torch.ones(3, 2)}, 1)


def test_partial_batches_split_unevenly_or_pad_for_a_pipeline():
    batch = {"input_ids": torch.arange(6).view(3, 2), "labels": torch.arange(6).view(3, 2), "flag": True}
    parts = split_rows(batch, 2)
    assert [p["input_ids"].shape[0] for p in parts] == [2, 1] and parts[1]["flag"] is True
    assert len(split_rows(batch, 8)) == 3  # never an empty micro-batch
    padded, real = pad_rows(batch, 2)
    assert real == 3 and padded["input_ids"][3].tolist() == [4, 5] and padded["labels"][3].tolist() == [-100, -100]
    with pytest.raises(ValueError, match="dataloader_drop_last=True"):
        pad_rows({"labels": torch.ones(3)}, 2)


def test_optimizers_that_cannot_step_sharded_parameters_are_refused():
    for name in SHARDED_OPTIMIZERS:
        check_optimizer(name, custom_optimizer=False)
    with pytest.raises(ValueError, match="adamw_torch, adamw_torch_fused"):
        check_optimizer("adafactor", custom_optimizer=False)
    check_optimizer("adafactor", custom_optimizer=True)  # optimizer_cls_and_kwargs replaces it


def test_hardware_is_detected_from_the_device():
    known = builtin_hardware._detected_gpu("NVIDIA A100-SXM4-40GB", 42.41, 4)
    assert (known.name, known.memory_gb, known.gpus_per_node) == ("auto:a100", 42.4, 4)
    assert known.peak_tflops == builtin_hardware.A100.peak_tflops
    unknown = builtin_hardware._detected_gpu("NVIDIA L40S", 48.3, 2)
    assert unknown.name == "auto:unknown" and unknown.memory_gb == 48.3
    assert "unknown GPU NVIDIA L40S" in unknown.sources["detected"] and "profile hardware" in unknown.sources["detected"]
    if not torch.cuda.is_available():
        profile = builtin_hardware.hardware_for("auto", 4)
        assert profile.name == "auto:cpu" and profile.gpus_per_node == 4 and profile.num_nodes == 1
        assert 0 < profile.device.memory_gb and all(v > 0 for v in profile.device.matmul_tflops.values())


def test_the_search_never_proposes_pipelines_the_runtime_refuses():
    bare = describe_model(tiny_bert(tf.BertModel))
    assert max_pipeline_degree(bare) == 1
    assert {c.pp for c in step_configs(bare, 2, 4, max_pp=max_pipeline_degree(bare))} == {1}
    classifier = describe_model(tiny_bert())
    assert max_pipeline_degree(classifier) is None
    assert {c.pp for c in step_configs(classifier, 2, 4)} == {1, 2}

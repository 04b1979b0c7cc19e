"""Fast checks (no launch) of ``galvatron_hf.training.evaluation_hooks``: what each layout refuses to evaluate,
which batches carry labels, the pipeline loss's refusals, and which model outputs become the logits."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from galvatron_hf.training.evaluation import EvaluationError
from galvatron_hf.training.evaluation_hooks import (
    PIPELINE_LOGITS_MESSAGE,
    check_evaluation,
    has_all_labels,
    pipeline_loss,
    prediction_logits,
)


def test_pipelines_evaluate_the_loss_only():
    check_evaluation(pp=2, include_for_metrics=None, prediction_loss_only=True)
    check_evaluation(pp=1, include_for_metrics=["inputs"], prediction_loss_only=False)
    with pytest.raises(EvaluationError, match="only for plans with pp = 1"):
        check_evaluation(pp=2, include_for_metrics=None, prediction_loss_only=False)
    with pytest.raises(EvaluationError, match="drop 'loss' from include_for_metrics"):
        check_evaluation(pp=1, include_for_metrics=["inputs", "loss"], prediction_loss_only=True)


def test_labels_must_be_named_labels():
    batch = {"input_ids": torch.ones(2, 3), "labels": torch.ones(2, 3)}
    assert has_all_labels(batch, ["labels"])
    assert not has_all_labels(batch, [])
    assert not has_all_labels({"input_ids": torch.ones(2, 3), "labels": None}, ["labels"])
    with pytest.raises(EvaluationError, match="rename the label column to 'labels'"):
        has_all_labels({"input_ids": torch.ones(2, 3), "target": torch.ones(2)}, ["target"])


def test_pipeline_loss_refuses_logits_and_unlabelled_batches():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long)}
    with pytest.raises(EvaluationError, match="only for plans with pp = 1") as refused:
        pipeline_loss(None, batch, 2, prediction_loss_only=False, has_labels=True)
    assert str(refused.value) == PIPELINE_LOGITS_MESSAGE
    with pytest.raises(EvaluationError, match="needs 'labels'"):
        pipeline_loss(None, batch, 2, prediction_loss_only=True, has_labels=False)


def test_logits_are_the_outputs_left_after_ignore_keys():
    logits, hidden = torch.zeros(2, 5), torch.ones(2, 3, 4)
    outputs = {"logits": logits, "hidden_states": hidden, "past_key_values": object()}
    config = tf.LlamaConfig()
    assert getattr(config, "keys_to_ignore_at_inference", None) is None  # the default list applies
    kept = prediction_logits(outputs, rows=2, ignore_keys=None, config=config)
    assert isinstance(kept, tuple) and kept[0] is logits and kept[1] is hidden
    assert prediction_logits(outputs, rows=2, ignore_keys=["hidden_states", "past_key_values"], config=None) is logits
    config.keys_to_ignore_at_inference = ["past_key_values", "hidden_states"]
    assert prediction_logits(outputs, rows=2, ignore_keys=None, config=config) is logits


def test_logits_not_laid_out_per_sample_are_refused():
    outputs = {"logits": torch.zeros(2, 5), "hidden_states": torch.ones(4, 3)}
    with pytest.raises(EvaluationError, match="ignore_keys=\\['hidden_states'\\]"):
        prediction_logits(outputs, rows=2, ignore_keys=None, config=None)

"""Fast checks (no launch) of ``galvatron_hf.training.evaluation_hooks``: what an evaluation refuses, which
batches carry labels, and which model outputs become the logits."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from galvatron_hf.training.evaluation import EvaluationError
from galvatron_hf.training.evaluation_hooks import (
    check_evaluation,
    has_all_labels,
    prediction_logits,
)


def test_per_sample_losses_are_refused():
    check_evaluation(include_for_metrics=["inputs"])
    with pytest.raises(EvaluationError, match="drop 'loss' from include_for_metrics"):
        check_evaluation(include_for_metrics=["inputs", "loss"])


def test_labels_must_be_named_labels():
    batch = {"input_ids": torch.ones(2, 3), "labels": torch.ones(2, 3)}
    assert has_all_labels(batch, ["labels"])
    assert not has_all_labels(batch, [])
    assert not has_all_labels({"input_ids": torch.ones(2, 3), "labels": None}, ["labels"])
    with pytest.raises(EvaluationError, match="rename the label column to 'labels'"):
        has_all_labels({"input_ids": torch.ones(2, 3), "target": torch.ones(2)}, ["target"])


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

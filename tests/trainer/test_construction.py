"""Fast checks (no launch) of ``galvatron_hf.training.construction``: the Trainer arguments refused before
sharding, and the sequence lengths a plan is priced for."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import IterableDataset

sys.path.insert(0, str(Path(__file__).parent))
import trainer_cases as cases

from galvatron_hf.training.construction import refuse_unsupported, sample_length, sequence_lengths


def test_arguments_that_bypass_the_sharding_are_refused():
    model = torch.nn.Linear(2, 2)
    refuse_unsupported(model, (), {"optimizers": (None, None), "train_dataset": [1]})
    with pytest.raises(ValueError, match="pass model=..."):
        refuse_unsupported(None, (), {})
    with pytest.raises(ValueError, match="does not support model_init"):
        refuse_unsupported(model, (), {"model_init": lambda: model})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer_cls_and_kwargs"):
        refuse_unsupported(model, (), {"optimizers": (optimizer, None)})
    with pytest.raises(TypeError, match="by name"):
        refuse_unsupported(model, (None,), {})


class _Stream(IterableDataset):
    def __iter__(self):
        raise AssertionError("the stream must not be read to plan")


def test_sequence_lengths_from_flag_then_first_sample():
    llama, t5 = cases.make_model("llama"), cases.make_model("t5")
    dataset = cases.make_dataset("llama", samples=2)  # datasets.Dataset, rows of SEQ tokens
    assert sequence_lengths(None, dataset, llama) == (cases.SEQ, None)
    assert sequence_lengths(32, dataset, llama) == (32, None)
    assert sequence_lengths(None, _Stream(), llama) == (None, None)
    assert sequence_lengths(None, None, llama) == (None, None)
    assert sequence_lengths(None, [], llama) == (None, None)
    seq2seq = [{"input_ids": torch.ones(12, dtype=torch.long), "labels": [1, 2, 3]}]
    assert sequence_lengths(None, seq2seq, t5) == (12, 3)
    with_decoder = [{"input_ids": [1] * 12, "decoder_input_ids": [0] * 5, "labels": [1, 2, 3]}]
    assert sequence_lengths(None, with_decoder, t5) == (12, 5)


def test_sample_lengths():
    assert sample_length(torch.ones(3, 7)) == 7
    assert sample_length([4, 5]) == 2
    assert sample_length(torch.tensor(3)) is None
    assert sample_length(3) is None and sample_length(None) is None

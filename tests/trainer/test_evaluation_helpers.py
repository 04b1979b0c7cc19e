"""Fast checks (no launch) of ``galvatron_hf.training.evaluation``: which rows of a step are real, the eval_loss
weighting, label masks, the iterable counter, and the refusal of outputs not laid out per sample."""

from __future__ import annotations

import types

import pytest
import torch

from galvatron_hf.training.evaluation import (
    CountingIterable,
    EvalProgress,
    EvaluationError,
    check_rows,
    ignores_label_rows,
    mask_rows,
)


def _progress(total: int | None, data_rank: int = 0, data_size: int = 4, counter=None, loader=None) -> EvalProgress:
    return EvalProgress(loader, data_rank, data_size, None, total, counter)


def test_real_rows_of_an_uneven_last_step():
    # 13 samples, 2 per group, 4 groups: steps of 8 then 5 real + 3 fillers
    progress = _progress(13, data_rank=2)
    progress.begin_step(2)
    assert (progress.real_rows, progress.local_real_rows(2)) == (8, 2)
    progress.begin_step(2)
    assert progress.real_rows == 5 and progress.real_samples == 13
    assert [_progress_at(13, rank) for rank in range(4)] == [2, 2, 1, 0]


def _progress_at(total: int, rank: int) -> int:
    progress = _progress(total, data_rank=rank)
    progress.begin_step(2)
    progress.begin_step(2)
    return progress.local_real_rows(2)


def test_fewer_samples_than_one_step():
    progress = _progress(3, data_rank=1)
    progress.begin_step(2)
    assert progress.real_rows == 3 and progress.local_real_rows(2) == 1


def test_unsized_stream_counted_at_the_end():
    counter = CountingIterable(range(5))
    loader = types.SimpleNamespace(end_of_dataloader=False)
    progress = _progress(None, data_size=2, counter=counter, loader=loader)
    assert list(counter) == list(range(5)) and counter.count == 5
    progress.begin_step(2)
    assert progress.real_rows == 4  # not the end yet: the whole step counts
    loader.end_of_dataloader = True
    progress.begin_step(2)
    assert progress.real_rows == 1 and progress.real_samples == 5


def test_eval_loss_weights_steps_by_real_samples():
    progress = _progress(13)
    for loss in (1.0, 4.0):
        progress.begin_step(2)
        progress.add_loss(torch.tensor(loss))
    assert progress.mean_loss(drop_non_finite=True) == pytest.approx((8 * 1.0 + 5 * 4.0) / 13)
    progress.begin_step(2)
    progress.add_loss(torch.tensor(float("nan")))
    assert progress.mean_loss(drop_non_finite=True) == pytest.approx((8 * 1.0 + 5 * 4.0) / 13)
    assert torch.isnan(torch.tensor(progress.mean_loss(drop_non_finite=False)))


def test_masked_rows_leave_the_labels_untouched():
    classes = torch.tensor([2, 0, 1])
    masked = mask_rows(classes, 1)
    assert masked.tolist() == [2, -100, -100] and classes.tolist() == [2, 0, 1]


def test_which_losses_ignore_label_rows():
    def model(**config):
        return types.SimpleNamespace(config=types.SimpleNamespace(**config))

    classes = torch.tensor([1, 0])
    assert ignores_label_rows(model(problem_type=None, num_labels=3), classes)
    assert not ignores_label_rows(model(problem_type=None, num_labels=1), classes)  # regression
    assert not ignores_label_rows(model(problem_type="regression", num_labels=3), classes)
    assert not ignores_label_rows(model(problem_type=None, num_labels=3), torch.ones(2, 3))  # multi-label
    assert ignores_label_rows(model(), torch.tensor([[1, 2]]))  # token labels


def test_outputs_not_laid_out_per_sample_are_refused():
    check_rows({"logits": torch.zeros(2, 3), "pair": (torch.zeros(2), torch.zeros(2, 4))}, rows=2)
    with pytest.raises(EvaluationError, match="ignore_keys=\\['hidden'\\]"):
        check_rows({"logits": torch.zeros(2, 3), "hidden": torch.zeros(4, 3)}, rows=2)

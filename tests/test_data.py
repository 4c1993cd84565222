import numpy as np
import pytest
import torch

from ual_plugin.data import collate_token_column, read_uncertainty, segment_ids


def test_read_uncertainty_ok():
    np.testing.assert_array_equal(read_uncertainty([1, 2.5, 0], "uncertainty"), [1.0, 2.5, 0.0])


def test_read_uncertainty_missing_column_names_it():
    with pytest.raises(ValueError, match=r"train dataset has no column 'uncertainty'.*prompt, completion"):
        read_uncertainty(None, "uncertainty", "train", available=["prompt", "completion"])


def test_read_uncertainty_bad_rows_are_counted_and_named():
    with pytest.raises(ValueError, match=r"3 of 5 rows of the eval dataset have no usable 'u'.*first is row 1 \(missing\)"):
        read_uncertainty([1.0, None, float("nan"), -2.0, 4.0], "u", "eval")
    with pytest.raises(ValueError, match=r"row 0 \(not a number"):
        read_uncertainty(["high"], "u")


def test_collate_padded_right_and_left():
    ids = torch.zeros(2, 4, dtype=torch.long)
    out = collate_token_column([[0.1, 0.1], [0.5, 0.5, 0.5]], ids)
    torch.testing.assert_close(out, torch.tensor([[0.1, 0.1, 0, 0], [0.5, 0.5, 0.5, 0]]))
    out = collate_token_column([[0.1, 0.1], [0.5, 0.5, 0.5]], ids, padding_side="left")
    torch.testing.assert_close(out, torch.tensor([[0, 0, 0.1, 0.1], [0, 0.5, 0.5, 0.5]]))


def test_collate_padding_free_and_misalignment_errors():
    ids = torch.zeros(1, 6, dtype=torch.long)
    out = collate_token_column([[0.1, 0.1], [0.5, 0.5, 0.5]], ids, padding_free=True)
    torch.testing.assert_close(out, torch.tensor([[0.1, 0.1, 0.5, 0.5, 0.5, 0.0]]))
    with pytest.raises(ValueError, match="do not fit"):
        collate_token_column([[0.1] * 7], ids, padding_free=True)
    with pytest.raises(ValueError, match="smoothing values for a row"):
        collate_token_column([[0.1] * 5], torch.zeros(1, 4, dtype=torch.long))


def test_segment_ids_rows_and_packed():
    seg = segment_ids(None, torch.Size([2, 3]), torch.device("cpu"))
    assert seg.tolist() == [[0, 0, 0], [1, 1, 1]]
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 0, 1, 2, 3]])
    assert segment_ids(pos, pos.shape, pos.device).tolist() == [[0, 0, 0, 1, 1, 2], [3, 3, 4, 4, 4, 4]]


def test_sample_means_averages_each_sample_then_counts_samples():
    from ual_plugin.data import sample_means, segment_ids

    values = torch.tensor([[0.1, 0.1, 0.1, 0.5, 0.5], [0.3, 0.3, 0.3, 0.3, 0.0]])
    mask = torch.tensor([[True, True, True, True, False], [False, True, True, True, False]])
    # row 0 packs two samples (positions restart at 0), row 1 is one padded sample
    position_ids = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]])
    total, n = sample_means(values, segment_ids(position_ids, values.shape, values.device), mask)
    assert int(n) == 3 and float(total) == pytest.approx(0.1 + 0.5 + 0.3)

"""MNIST-1D: the training set is the package's benchmark whatever the test size."""

from __future__ import annotations

import pytest
import torch

from galcore.experiments.harness.data import mnist1d


def test_mnist1d_training_set_does_not_depend_on_the_test_size(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GALCORE_DATA", str(tmp_path))
    from mnist1d.data import make_dataset

    small, large = mnist1d(4000, 1000), mnist1d(4000, 1500)
    assert torch.equal(small.x_train, large.x_train) and torch.equal(small.y_train, large.y_train)
    bench = make_dataset()  # the package's defaults: the paper's 4,000 / 1,000 signals, seed 42
    assert torch.equal(small.x_train, torch.tensor(bench["x"], dtype=torch.float32).unsqueeze(1))
    assert torch.equal(small.x_test, torch.tensor(bench["x_test"], dtype=torch.float32).unsqueeze(1))
    # the larger test set is its own draw, balanced, on the training set's scale, and no copy of it
    assert large.x_test.shape == (1500, 1, 40) and large.y_test.bincount().tolist() == [150] * 10
    assert abs(float(large.x_test.mean())) < 0.05 and abs(float(large.x_test.std()) - 1) < 0.05
    flat_tr, flat_te = small.x_train.reshape(4000, -1), large.x_test.reshape(1500, -1)
    assert torch.cdist(flat_te, flat_tr).min() > 1e-3
    assert torch.equal(mnist1d(1000, 1000).x_train, small.x_train[:1000])
    with pytest.raises(ValueError, match="n_train"):
        mnist1d(5000, 1000)

"""optax_lr.datasets: the splits every example, notebook and benchmark trains on."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from optax_lr import datasets


def test_digits_splits_are_one_shuffle_of_the_data_scaled_to_unit_range():
  splits = datasets.digits()
  assert [len(y) for y in (splits.y_train, splits.y_valid, splits.y_test)] == [1000, 397, 400]
  for x, y in zip(splits[0::2], splits[1::2]):
    assert x.dtype == np.float32 and y.dtype == np.int32 and x.shape[1:] == (64,)
    assert 0.0 <= x.min() and x.max() <= 1.0
  assert splits.num_classes == 10
  # The three splits are a permutation of scikit-learn's data, pixels / 16.
  x_all, y_all = load_digits(return_X_y=True)
  x = np.concatenate(splits[0::2])
  y = np.concatenate(splits[1::2])
  order = np.random.default_rng(0).permutation(len(y_all))
  np.testing.assert_array_equal(x, (x_all[order] / 16.0).astype(np.float32))
  np.testing.assert_array_equal(y, y_all[order])


def test_digits_shuffle_follows_the_seed():
  a, b, c = datasets.digits(seed=0), datasets.digits(seed=0), datasets.digits(seed=1)
  np.testing.assert_array_equal(a.x_train, b.x_train)
  assert not np.array_equal(a.y_train, c.y_train)


def test_an_empty_test_split_is_allowed():
  splits = datasets.digits(n_train=1500, n_valid=297)
  assert splits.x_test.shape == (0, 64) and splits.num_classes == 10
  assert len(splits.y_train) + len(splits.y_valid) == 1797


@pytest.mark.parametrize(
  "n_train, n_valid, bad",
  [(0, 297, "n_train=0"), (1500, 0, "n_valid=0"), (1500, 298, "n_valid=298")],
)
def test_digits_rejects_sizes_that_do_not_fit(n_train, n_valid, bad):
  with pytest.raises(ValueError, match=bad):
    datasets.digits(n_train=n_train, n_valid=n_valid)


def test_train_batches_drop_the_remainder_in_order():
  splits = datasets.digits(n_train=1003, n_valid=297)
  x, y = splits.train_batches(100)
  assert x.shape == (10, 100, 64) and y.shape == (10, 100)
  np.testing.assert_array_equal(x.reshape(-1, 64), splits.x_train[:1000])
  np.testing.assert_array_equal(y.reshape(-1), splits.y_train[:1000])
  for bad in (0, 1004):
    with pytest.raises(ValueError, match=f"batch_size.*{bad}"):
      splits.train_batches(bad)
  with pytest.raises(TypeError, match="batch_size"):  # a float, even a whole one
    splits.train_batches(100.0)


def test_mnist1d_is_generated_offline_and_leaves_numpy_state_alone():
  pytest.importorskip("mnist1d")
  np.random.seed(123)
  before = np.random.get_state()[1].copy()
  splits = datasets.mnist1d(n_train=300, n_valid=100, num_samples=500)
  np.testing.assert_array_equal(np.random.get_state()[1], before)
  assert [len(y) for y in splits[1::2]] == [300, 100, 100]
  assert splits.x_train.shape[1:] == (40,) and splits.num_classes == 10
  np.testing.assert_array_equal(
    splits.x_valid, datasets.mnist1d(n_train=300, n_valid=100, num_samples=500).x_valid
  )

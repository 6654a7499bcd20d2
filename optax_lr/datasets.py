"""Small offline data sets for the examples, notebooks and benchmarks.

Not needed to use the learning-rate methods: these loaders exist so that every
example, notebook and benchmark of this project trains on the same splits,
loaded by one function, with nothing downloaded. They need the ``examples``
extra (``pip install "optax_lr[examples]"``): scikit-learn for :func:`digits`
and ``mnist1d`` for :func:`mnist1d`.

Each loader returns a :class:`Splits` of float32 inputs and int32 labels,
shuffled once by ``seed``:

* ``train``: what the weights are trained on;
* ``valid``: what a method may look at (the cost fed to ``optax_lr.observe``,
  the validation gradients of the hypergradient methods);
* ``test``: held out from every method.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from optax_lr import _checks

__all__ = ["Splits", "digits", "mnist1d"]


class Splits(NamedTuple):
  """A data set split three ways, as numpy arrays (``n`` examples each)."""

  x_train: np.ndarray  # [n_train, ...] float32 (int32 for byte windows)
  y_train: np.ndarray  # [n_train] (or [n_train, T]) int32 labels
  x_valid: np.ndarray  # [n_valid, ...]
  y_valid: np.ndarray  # [n_valid]
  x_test: np.ndarray  # [n_test, ...], possibly empty
  y_test: np.ndarray  # [n_test]

  @property
  def num_classes(self) -> int:
    """One more than the largest label of any split."""
    return int(max(self.y_train.max(), self.y_valid.max(), self.y_test.max(initial=0))) + 1

  def train_batches(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The training split as ``steps = n_train // batch_size`` batches.

    What a ``lax.scan`` over one epoch reads. The last ``n_train mod
    batch_size`` examples are dropped.

    Args:
      batch_size: examples per batch, at most ``n_train``.

    Returns:
      ``(x, y)`` of shapes ``[steps, batch_size, ...]`` and
      ``[steps, batch_size, ...]``.
    """
    n_train = len(self.y_train)
    batch_size = _checks.positive_int("batch_size", batch_size)
    if batch_size > n_train:
      raise ValueError(f"batch_size must be at most n_train = {n_train}, got {batch_size}")
    steps = n_train // batch_size
    keep = steps * batch_size

    def batched(a):
      return a[:keep].reshape(steps, batch_size, *a.shape[1:])

    return batched(self.x_train), batched(self.y_train)


def _split(x, y, n_train: int, n_valid: int, seed: int, what: str) -> Splits:
  """Shuffles ``(x, y)`` by ``seed``; the first ``n_train`` train, the next
  ``n_valid`` validate, the rest is the test split (possibly empty)."""
  if n_train < 1 or n_valid < 1 or n_train + n_valid > len(y):
    raise ValueError(
      f"n_train and n_valid must be at least 1 and sum to at most the {len(y)} {what}, "
      f"got n_train={n_train} and n_valid={n_valid}"
    )
  order = np.random.default_rng(seed).permutation(len(y))
  x, y = x[order].astype(np.float32), y[order].astype(np.int32)
  a, b = n_train, n_train + n_valid
  return Splits(x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:])


def digits(n_train: int = 1000, n_valid: int = 397, seed: int = 0) -> Splits:
  """scikit-learn's 1797 8x8 digits (bundled with it, no download).

  Pixels are scaled to [0, 1] and flattened to 64 features; 10 classes. The
  examples left after ``n_train + n_valid`` are the test split (400 by
  default; none when the two take all 1797).

  Args:
    n_train: training examples.
    n_valid: validation examples.
    seed: the shuffle's seed.

  Returns:
    A :class:`Splits` with ``x`` of shape ``[n, 64]`` (float32) and ``y`` of
    shape ``[n]`` (int32).

  Example:
    >>> from optax_lr import datasets
    >>> splits = datasets.digits(n_train=1500, n_valid=297)
    >>> x, y = splits.train_batches(100)
    >>> x.shape, y.shape, splits.x_valid.shape, splits.num_classes
    ((15, 100, 64), (15, 100), (297, 64), 10)
  """
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  data = load_digits()
  return _split(data.data / 16.0, data.target, n_train, n_valid, seed, "digits")


def mnist1d(
  n_train: int = 3000, n_valid: int = 1000, num_samples: int = 5000, seed: int = 0
) -> Splits:
  """MNIST-1D: 40-sample 1-D signals of 10 digit templates, generated offline.

  Generated on the spot with ``mnist1d.data.make_dataset`` (the package's own
  generator; its ``get_dataset`` would try to download a pickle first). The
  generator's default arguments give the published data set of 5000 signals;
  ``num_samples`` makes a smaller one for quick runs. numpy's global random
  state, which the generator seeds, is left as it was.

  Args:
    n_train: training signals.
    n_valid: validation signals.
    num_samples: signals generated; the rest after ``n_train + n_valid`` are
      the test split.
    seed: the shuffle's seed (the signals themselves are the generator's).

  Returns:
    A :class:`Splits` with ``x`` of shape ``[n, 40]`` (float32) and ``y`` of
    shape ``[n]`` (int32).

  References:
    Greydanus, `Scaling down deep learning
    <https://arxiv.org/abs/2011.14439>`_, 2020.
  """
  from mnist1d.data import get_dataset_args  # pylint: disable=g-import-not-at-top
  from mnist1d.data import make_dataset  # pylint: disable=g-import-not-at-top

  args = get_dataset_args()
  args.num_samples = num_samples
  state = np.random.get_state()
  try:
    data = make_dataset(args)
  finally:
    np.random.set_state(state)
  x = np.concatenate([data["x"], data["x_test"]])
  y = np.concatenate([data["y"], data["y_test"]])
  return _split(x, y, n_train, n_valid, seed, "signals")

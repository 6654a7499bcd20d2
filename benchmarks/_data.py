"""The benchmarks' data sets: scikit-learn's digits and MNIST-1D, both offline.

Each loader returns a :class:`Splits` of float32 inputs and int32 labels:

* ``train``: what the weights are trained on;
* ``valid``: what the methods may look at (the cost fed to
  ``optax_lr.observe``, the validation gradients of the hypergradient methods);
* ``test``: held out from every method, the split the tables report.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Splits(NamedTuple):
  x_train: np.ndarray
  y_train: np.ndarray
  x_valid: np.ndarray
  y_valid: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray

  @property
  def num_classes(self) -> int:
    return int(max(self.y_train.max(), self.y_valid.max(), self.y_test.max())) + 1


def _split(x, y, n_train, n_valid, seed) -> Splits:
  order = np.random.default_rng(seed).permutation(len(y))
  x, y = x[order].astype(np.float32), y[order].astype(np.int32)
  a, b = n_train, n_train + n_valid
  return Splits(x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:])


def digits(n_train: int = 1000, n_valid: int = 397, seed: int = 0) -> Splits:
  """scikit-learn's 1797 8x8 digits (bundled, no download), pixels in [0, 1].

  The rest after ``n_train + n_valid`` is the test split (400 by default).
  """
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  data = load_digits()
  if n_train + n_valid >= len(data.target):
    raise ValueError(
        f"n_train + n_valid must leave a test split of the {len(data.target)} "
        f"digits, got {n_train} + {n_valid}"
    )
  return _split(data.data / 16.0, data.target, n_train, n_valid, seed)


def mnist1d(n_train: int = 3000, n_valid: int = 1000, num_samples: int = 5000,
            seed: int = 0) -> Splits:
  """MNIST-1D (Greydanus 2020): 40-sample 1-D signals of 10 digit templates.

  Generated on the spot with ``mnist1d.data.make_dataset`` (the package's own
  generator; ``get_dataset`` would try to download a pickle first). The
  generator's default arguments give the published data set of 5000 signals;
  ``num_samples`` makes a smaller one for quick runs.
  """
  from mnist1d.data import get_dataset_args  # pylint: disable=g-import-not-at-top
  from mnist1d.data import make_dataset  # pylint: disable=g-import-not-at-top

  args = get_dataset_args()
  args.num_samples = num_samples
  state = np.random.get_state()  # make_dataset seeds numpy's global RNG
  try:
    data = make_dataset(args)
  finally:
    np.random.set_state(state)
  x = np.concatenate([data["x"], data["x_test"]])
  y = np.concatenate([data["y"], data["y_test"]])
  if n_train + n_valid >= len(y):
    raise ValueError(
        f"n_train + n_valid must leave a test split of the {len(y)} signals, "
        f"got {n_train} + {n_valid}"
    )
  return _split(x, y, n_train, n_valid, seed)


def have_mnist1d() -> bool:
  try:
    import mnist1d.data  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


LOADERS = {"digits": digits, "mnist1d": mnist1d}

"""The benchmarks' data sets, all offline: digits, MNIST-1D, a regression, the stdlib's source.

Each loader returns a :class:`Splits` (``optax_lr.datasets``):

* ``train``: what the weights are trained on;
* ``valid``: what the methods may look at (the cost fed to
  ``optax_lr.observe``, the validation gradients of the hypergradient methods);
* ``test``: held out from every method, the split the tables report.

Digits and MNIST-1D are ``optax_lr.datasets``' loaders; the generated
regression and the byte-level text of the Transformer LM are here.
"""

from __future__ import annotations

import math

import numpy as np

# The labelled data sets live in the package, so the examples and notebooks
# (which on Colab can import only the package) load them through the same
# functions.
from optax_lr.datasets import Splits
from optax_lr.datasets import digits
from optax_lr.datasets import mnist1d


def have_mnist1d() -> bool:
  try:
    import mnist1d.data  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


LOADERS = {"digits": digits, "mnist1d": mnist1d}


def chance_loss(splits: Splits) -> float:
  """The held-out loss of a model that learned nothing: what a diverged run scores.

  ``ln C`` for ``C`` classes (a uniform prediction); for a regression, the
  mean squared error on the test split of predicting the training targets'
  mean.
  """
  if isinstance(splits, RegressionSplits):
    return float(np.mean((splits.y_test - splits.y_train.mean()) ** 2))
  return math.log(splits.num_classes)


# ---------------------------------------------------------------- regression


class RegressionSplits(Splits):
  """:class:`Splits` of a regression: ``y`` float32 targets of shape ``[n, 1]``."""

  @property
  def num_classes(self) -> int:
    # Splits counts labels; float targets would give a meaningless count.
    raise TypeError("a regression has no classes (a diverged run scores _data.chance_loss)")


# The teacher-student task, fixed once before any method ran on it (issue
# 11's own example of a problem nobody tuned the defaults on): inputs
# N(0, I_8); the teacher a tanh MLP 8-32-1 with weights N(0, 1/fan_in) and
# biases N(0, 0.5^2); Gaussian label noise of standard deviation 0.2 (variance
# 0.04 against the targets' 0.7), so the held-out loss has a floor and a model
# that fits the noise shows it.
TEACHER_INPUTS = 8
TEACHER_HIDDEN = 32
TEACHER_NOISE = 0.2


def teacher_student(
  n_train: int = 1000, n_valid: int = 500, n_test: int = 1000, seed: int = 0
) -> RegressionSplits:
  """A regression on a random tanh teacher network, generated with numpy.

  Args:
    n_train: training examples.
    n_valid: validation examples.
    n_test: test examples.
    seed: the seed of the teacher, the inputs and the noise.

  Returns:
    A :class:`RegressionSplits` with ``x`` of shape ``[n, 8]`` and ``y`` of
    shape ``[n, 1]``, both float32.
  """
  rng = np.random.default_rng([seed, 11])
  d, h = TEACHER_INPUTS, TEACHER_HIDDEN
  w1 = rng.normal(0.0, 1.0 / math.sqrt(d), (d, h))
  b1 = rng.normal(0.0, 0.5, h)
  w2 = rng.normal(0.0, 1.0 / math.sqrt(h), (h, 1))
  n = n_train + n_valid + n_test
  x = rng.normal(size=(n, d))
  y = np.tanh(x @ w1 + b1) @ w2 + TEACHER_NOISE * rng.normal(size=(n, 1))
  x, y = x.astype(np.float32), y.astype(np.float32)
  a, b = n_train, n_train + n_valid
  return RegressionSplits(x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:])


# ---------------------------------------------------------------- text


class TextSplits(Splits):
  """:class:`Splits` of byte windows: ``x`` a window of ``T`` bytes (int32),
  ``y`` the same window shifted by one byte (the next byte at each position).

  The classes are the 256 byte values whatever bytes occur, so a diverged
  run scores ``ln 256`` nats per byte.
  """

  @property
  def num_classes(self) -> int:
    return 256


# Folders of the standard library that are not its own source: test suites
# (large, repetitive, and what a user would hold out anyway), installed
# packages, caches.
STDLIB_SKIPPED_DIRS = (
  "test",
  "tests",
  "idle_test",
  "site-packages",
  "dist-packages",
  "__pycache__",
)


def stdlib_root() -> str:
  """The standard library's folder of the running Python (no download)."""
  import sysconfig  # pylint: disable=g-import-not-at-top

  return sysconfig.get_paths()["stdlib"]


def stdlib_files(root: str | None = None) -> list[str]:
  """Every ``.py`` file under ``root`` (the stdlib), sorted, as paths relative to it.

  Test folders, ``site-packages`` and caches are skipped (``STDLIB_SKIPPED_DIRS``).
  """
  import os  # pylint: disable=g-import-not-at-top

  root = root or stdlib_root()
  found = []
  for folder, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if d not in STDLIB_SKIPPED_DIRS)
    for name in files:
      if name.endswith(".py"):
        found.append(os.path.relpath(os.path.join(folder, name), root))
  return sorted(found)


def split_files(
  files: list[str],
  sizes: dict[str, int],
  seed: int,
  max_bytes: int,
  valid_fraction: float,
  test_fraction: float,
) -> dict[str, list[str]]:
  """Assigns whole files to ``test``, ``valid`` and ``train``, by a seeded shuffle.

  The files are visited in the order of a permutation drawn with ``seed``;
  each goes to ``test`` until that split holds ``test_fraction * max_bytes``
  bytes, then to ``valid`` likewise, then to ``train`` until the total reaches
  ``max_bytes`` (the remaining files are not used). A file is in at most one
  split.
  """
  order = np.random.default_rng([seed, 7]).permutation(len(files))
  quota = {
    "test": test_fraction * max_bytes,
    "valid": valid_fraction * max_bytes,
    "train": (1.0 - valid_fraction - test_fraction) * max_bytes,
  }
  chosen = {"train": [], "valid": [], "test": []}
  filled = dict.fromkeys(chosen, 0)
  for i in order:
    name = files[i]
    for split in ("test", "valid", "train"):
      if filled[split] < quota[split]:
        chosen[split].append(name)
        filled[split] += sizes[name]
        break
    else:
      break
  return {split: sorted(names) for split, names in chosen.items()}


def stdlib_split(
  max_bytes: int = 4_000_000,
  valid_fraction: float = 0.1,
  test_fraction: float = 0.1,
  seed: int = 0,
  root: str | None = None,
) -> dict[str, list[str]]:
  """The stdlib files of each split of :func:`stdlib_text` (paths relative to ``root``)."""
  import os  # pylint: disable=g-import-not-at-top

  root = root or stdlib_root()
  files = stdlib_files(root)
  sizes = {f: os.path.getsize(os.path.join(root, f)) for f in files}
  return split_files(files, sizes, seed, max_bytes, valid_fraction, test_fraction)


def _windows(text: np.ndarray, starts: np.ndarray, length: int):
  idx = starts[:, None] + np.arange(length + 1)[None, :]
  w = text[idx].astype(np.int32)
  return w[:, :-1], w[:, 1:]


def stdlib_text(
  context: int = 64,
  max_bytes: int = 4_000_000,
  valid_fraction: float = 0.1,
  test_fraction: float = 0.1,
  train_windows: int | None = None,
  eval_windows: int = 128,
  seed: int = 0,
  root: str | None = None,
) -> TextSplits:
  """Byte-level language modelling on the standard library's own Python source.

  The text is on every machine (``sysconfig.get_paths()["stdlib"]``, no
  download). Whole files are split three ways with a fixed seed
  (:func:`split_files`; at most ``max_bytes`` bytes in all), each split's
  files joined in sorted order with a NUL byte between files. The examples are
  windows of ``context`` bytes and their next bytes:

  * ``train``: ``train_windows`` windows at offsets drawn uniformly with the
    seed (default: as many as fit end to end in the train text); the train
    loop draws its batches among them;
  * ``valid`` and ``test``: ``eval_windows`` windows at evenly spaced offsets,
    spanning the whole split (the same windows for every method and run).

  Returns a :class:`TextSplits`; :func:`stdlib_split` gives the files of each split.
  """
  import os  # pylint: disable=g-import-not-at-top

  root = root or stdlib_root()
  chosen = stdlib_split(max_bytes, valid_fraction, test_fraction, seed, root)
  texts = {}
  for split, names in chosen.items():
    parts = []
    for name in names:
      with open(os.path.join(root, name), "rb") as f:
        parts.append(f.read())
    texts[split] = np.frombuffer(b"\0".join(parts), np.uint8)
    if len(texts[split]) < 2 * (context + 1):
      raise ValueError(
        f"the {split} split holds {len(texts[split])} bytes, too few "
        f"for windows of {context}: raise max_bytes"
      )
  rng = np.random.default_rng([seed, 8])
  train = texts["train"]
  n_train = train_windows or len(train) // context
  x_train, y_train = _windows(train, rng.integers(0, len(train) - context, n_train), context)
  evals = []
  for split in ("valid", "test"):
    text = texts[split]
    starts = np.linspace(0, len(text) - context - 1, eval_windows).astype(np.int64)
    evals += list(_windows(text, starts, context))
  return TextSplits(x_train, y_train, *evals)

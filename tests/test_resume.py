"""Exact resume: a state saved mid-run continues bit for bit in a fresh process.

For every method of the contract suite's `METHODS`, a first process
(`_resume_worker.py save`) trains `RESUME_SAVED_AFTER` steps of the MLP
problem (epoch ends every 2 steps, fed to `optax_lr.observe`), saves params,
optimizer state and step index with `flax.serialization` and with
orbax-checkpoint, then runs on to `RESUME_TOTAL_STEPS`: the uninterrupted
run. A second, fresh process (`_resume_worker.py resume`) restores each
checkpoint onto templates it builds from scratch and runs the remaining
steps. Its final params, state and losses must equal the uninterrupted run's
bit for bit. (Both processes share XLA flags and a persistent compilation
cache, so the restart runs the very executable of the original run, as a
production restart with a compilation cache does; without the cache the
results are the same, only slower to get.)

The checkpoint is taken at a hard moment: the epoch that ends just before it
diverged (its cost is +inf), so AALR has a rollback pending (to be carried
out by the first update after the restore), ASLR has started its search,
the windowed methods are part-way through an epoch window, ASLR's PRNG key
has been split six times and the hypergradient tangents are nonzero;
`test_checkpoints_hold_the_hard_parts` checks that this is so.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _reliability as rel
from optax_lr._monitor import EpochWindow
from optax_lr.aalr import ROLLBACK
from optax_lr.aalr import AALRState
from optax_lr.aslr import ASLRState
from optax_lr.hypergradient import HypergradientState

FORMATS = ("flax", "orbax")
WORKER = pathlib.Path(__file__).with_name("_resume_worker.py")


def _load(path: pathlib.Path, template):
  return flax.serialization.from_bytes(template, path.read_bytes())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """``{case name: (uninterrupted, saved checkpoint, {format: resumed})}``."""
  root = tmp_path_factory.mktemp("resume")
  env = dict(
    os.environ,
    JAX_COMPILATION_CACHE_DIR=str(root / "compilation_cache"),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  for mode in ("save", "resume"):
    done = subprocess.run(
      [sys.executable, str(WORKER), mode, str(root)],
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert done.returncode == 0, f"{mode}:\n{done.stderr[-4000:]}"

  results = {}
  for case in rel.METHODS:
    tx = case.make(case.parabola_lr)
    checkpoint = jax.eval_shape(lambda: rel.resume_template(tx))
    params, state = checkpoint["params"], checkpoint["state"]
    losses = jax.ShapeDtypeStruct((rel.RESUME_TOTAL_STEPS - rel.RESUME_SAVED_AFTER,), jnp.float32)
    outputs = {"params": params, "state": state, "losses": losses}
    results[case.name] = (
      _load(root / f"{case.name}.uninterrupted", outputs),
      _load(root / f"{case.name}.msgpack", checkpoint),
      {fmt: _load(root / f"{case.name}.{fmt}.resumed", outputs) for fmt in FORMATS},
    )
  return results


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", rel.METHODS, ids=rel.case_id)
def test_restored_in_a_fresh_process_continues_bit_for_bit(runs, case, fmt):
  expected, _, resumed = runs[case.name]
  rel.assert_trees_identical(resumed[fmt], expected)


def test_checkpoints_hold_the_hard_parts(runs):
  saved = [checkpoint["state"] for _, checkpoint, _ in runs.values()]
  aalr = [s for state in saved for s in rel.find_states(state, AALRState)]
  aslr = [s for state in saved for s in rel.find_states(state, ASLRState)]
  hyper = [s for state in saved for s in rel.find_states(state, HypergradientState)]
  windows = [w for state in saved for w in rel.find_states(state, EpochWindow)]
  assert aalr and aslr and hyper
  # Every AALR state that `observe` drives was saved with a rollback still
  # to be carried out (a windowed one ends its own epochs, from `value`).
  observed = [s for s in aalr if s.window is None]
  assert observed and all(int(s.pending) == ROLLBACK for s in observed)
  # ASLR's key has moved on from its seed, and its search has started.
  assert all(int(s.count) == rel.RESUME_SAVED_AFTER for s in aslr)
  assert all(int(s.radius) > 0 for s in aslr if s.window is None)
  # Some epoch window is part-way through, and the tangents are nonzero.
  assert any(int(w.steps) > 0 for w in windows)
  assert all(
    any(np.any(leaf != 0) for leaf in jax.tree_util.tree_leaves((s.tangent, s.u_prev)))
    for s in hyper
  )

"""Every method under `jax.jit` with params and data sharded over a device mesh.

JAX's own SPMD partitioner is the distributed engine: the methods only use
`jnp` ops and global reductions (`optax_lr._tree`), which XLA partitions and
all-reduces. On a one-axis mesh of 8 devices the params are sharded FSDP-style
(each leaf's leading axis split over the devices) and each batch is split over
the same devices (data parallelism). For every method in the contract suite's
`METHODS`:

* the state that `init` builds from sharded params, and the state a jitted
  sharded training run returns, keep every param-sized buffer sharded like
  its param: no device holds a whole replicated copy;
* the run gives the same params, state and losses as the same jitted run on
  one device, up to the reordering of floating-point reductions across
  devices (integer and boolean state, the PRNG key included, is identical);
* the same holds across processes: two processes joined by
  `jax.distributed.initialize` (`_multihost_worker.py`, 4 host devices each,
  CPU collectives over gloo) run the global 8-device mesh, as two hosts
  would, and match the one-device run. To pay for one compilation rather
  than fifteen there, all methods run together, each on its own copy of the
  MLP inside one `optax.partition` (`_reliability.combined_runner`).

CI runs this on the 8 host-platform CPU devices that `conftest.py` creates; on
a machine with 8 accelerators the mesh is built from those instead.

XLA:CPU runs the collectives of one program on a shared thread pool: two
programs with collectives in flight at once can wait on each other, so every
sharded call below is blocked on before the next is dispatched, and results
are compared as NumPy arrays (no eager ops on sharded arrays).
"""

from __future__ import annotations

import functools
import pathlib
import socket
import subprocess
import sys

import flax.serialization
import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import _reliability as rel
import optax_lr

NUM_DEVICES = 8
TOLERANCE = 2e-5  # of each leaf's largest magnitude
WORKER = pathlib.Path(__file__).with_name("_multihost_worker.py")


def _mesh_devices():
  devices = jax.devices()
  if len(devices) < NUM_DEVICES:
    devices = jax.devices("cpu")
  if len(devices) < NUM_DEVICES:
    pytest.skip(f"needs {NUM_DEVICES} devices (conftest.py sets XLA_FLAGS)")
  return devices[:NUM_DEVICES]


def _to_numpy(tree):
  return jax.tree_util.tree_map(np.asarray, tree)


def _assert_close(actual, expected):
  """Floats within ``TOLERANCE`` of each leaf's largest magnitude; the rest equal."""
  assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
  for (path, a), b in zip(
    jax.tree_util.tree_leaves_with_path(actual), jax.tree_util.tree_leaves(expected)
  ):
    where = jax.tree_util.keystr(path)
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, where
    if np.issubdtype(a.dtype, np.floating):
      scale = float(np.max(np.abs(b), initial=0.0))
      np.testing.assert_allclose(a, b, rtol=TOLERANCE, atol=TOLERANCE * scale, err_msg=where)
    else:
      np.testing.assert_array_equal(a, b, err_msg=where)


@functools.lru_cache(maxsize=None)
def _one_device_run(case):
  """``{"params", "state", "losses"}`` of the run on one device, as NumPy."""
  device = _mesh_devices()[0]
  tx, run = rel.sharded_runner(case)
  params = jax.device_put(rel.mlp_params(), device)
  data = jax.device_put(rel.batches(0, rel.SHARDED_STEPS), device)
  params, state, losses = jax.block_until_ready(run(params, tx.init(params), data))
  return _to_numpy({"params": params, "state": state, "losses": losses})


@functools.lru_cache(maxsize=None)
def _combined_one_device_run():
  """`_reliability.combined_runner` (every method in one `optax.partition`)
  on one CPU device (the two-process run uses CPU devices), as NumPy."""
  device = jax.devices("cpu")[0]
  tx, run, params = rel.combined_runner()
  params = jax.device_put(params, device)
  data = jax.device_put(rel.batches(0, rel.SHARDED_STEPS), device)
  params, state, losses = jax.block_until_ready(run(params, tx.init(params), data))
  return _to_numpy({"params": params, "state": state, "losses": losses})


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
  """Starts the two-process run at once (it overlaps the one-process tests);
  returns a function that waits for it and gives its output, as NumPy."""
  out = tmp_path_factory.mktemp("multihost")
  with socket.socket() as s:  # a free port for the coordinator
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  workers = [
    subprocess.Popen(
      [sys.executable, str(WORKER), str(pid), str(port), str(out)],
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for pid in range(2)
  ]

  @functools.lru_cache(maxsize=None)
  def wait():
    logs = [worker.communicate(timeout=600)[0] for worker in workers]
    for pid, (worker, log) in enumerate(zip(workers, logs)):
      assert worker.returncode == 0, f"process {pid}:\n{log[-4000:]}"
    blob = (out / "multihost.msgpack").read_bytes()
    return flax.serialization.from_bytes(_combined_one_device_run(), blob)

  yield wait
  for worker in workers:
    if worker.poll() is None:
      worker.kill()
      worker.communicate()


@pytest.mark.parametrize("case", rel.METHODS, ids=rel.case_id)
def test_sharded_run_matches_one_device_and_state_stays_sharded(case, two_processes):
  devices = _mesh_devices()
  mesh = Mesh(np.array(devices), ("fsdp",))
  fsdp = NamedSharding(mesh, P("fsdp"))
  tx, run = rel.sharded_runner(case)

  # FSDP params, data-parallel batches: leaf and batch axes over the mesh.
  params = jax.device_put(rel.mlp_params(), fsdp)
  state = jax.block_until_ready(tx.init(params))
  rel.assert_sharded_like_params(params, state)
  data = jax.device_put(rel.batches(0, rel.SHARDED_STEPS), NamedSharding(mesh, P(None, "fsdp")))
  params, state, losses = jax.block_until_ready(run(params, state, data))
  rel.assert_sharded_like_params(params, state)
  for leaf in jax.tree_util.tree_leaves(params):
    assert leaf.sharding.is_equivalent_to(fsdp, leaf.ndim)

  sharded = _to_numpy({"params": params, "state": state, "losses": losses})
  _assert_close(sharded, _one_device_run(case))
  rel.assert_rates_valid(optax_lr.current_lr(sharded["state"]))


@pytest.mark.parametrize("case", rel.METHODS, ids=rel.case_id)
def test_two_processes_match_one_device(case, two_processes):
  expected = _combined_one_device_run()
  actual = two_processes()
  _assert_close(actual["losses"], expected["losses"])
  _assert_close(actual["params"][case.name], expected["params"][case.name])
  _assert_close(actual["state"].inner_states[case.name], expected["state"].inner_states[case.name])

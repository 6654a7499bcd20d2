"""One process of the two-process (multi-host) run of `test_sharding.py`.

``python tests/_multihost_worker.py PROCESS_ID PORT OUT_DIR``: joins a
two-process JAX cluster with `jax.distributed.initialize` (coordinator on
``localhost:PORT``, CPU collectives over gloo), each process owning 4 host
devices of a global 8-device mesh, as two hosts of 4 accelerators would. It
runs `_reliability.combined_runner` (every method of the contract suite's
`METHODS`, each on its own copy of the MLP inside one `optax.partition`, so
one compilation covers them all) on global params FSDP-sharded across both
processes and global data-parallel batches, checks that every param-sized
state buffer is sharded across all 8 devices, and gathers params, state and
losses to the host. Process 0 writes them to ``OUT_DIR/multihost.msgpack`` (a
`flax.serialization` blob) for the test to compare with its one-device run.

Importing this module does nothing (pytest imports it for doctests): JAX is
configured and imported in `main`.
"""

from __future__ import annotations

import os
import pathlib
import sys

NUM_PROCESSES, LOCAL_DEVICES = 2, 4


def main(process_id: int, port: str, out_dir: pathlib.Path) -> None:
  # Before JAX is imported: this process's devices, CPU even on a GPU host.
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  # pylint: disable=g-import-not-at-top
  import flax.serialization
  import jax
  import numpy as np
  from jax.experimental import multihost_utils
  from jax.sharding import Mesh
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_numpy_dtype_promotion", "strict")
  jax.distributed.initialize(
    coordinator_address=f"localhost:{port}",
    num_processes=NUM_PROCESSES,
    process_id=process_id,
    initialization_timeout=120,
  )
  import _reliability as rel  # tests/ is this script's sys.path[0]

  def global_array(tree, sharding):
    """Global arrays from host values that every process holds in full."""
    return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_callback(
        np.shape(x), sharding, lambda index, x=np.asarray(x): x[index]
      ),
      tree,
    )

  assert jax.process_count() == NUM_PROCESSES
  assert len(jax.devices()) == NUM_PROCESSES * LOCAL_DEVICES
  mesh = Mesh(np.array(jax.devices()), ("fsdp",))
  tx, run, params = rel.combined_runner()
  params = global_array(params, NamedSharding(mesh, P("fsdp")))
  state = jax.block_until_ready(tx.init(params))
  rel.assert_sharded_like_params(params, state)
  data = global_array(rel.batches(0, rel.SHARDED_STEPS), NamedSharding(mesh, P(None, "fsdp")))
  params, state, losses = jax.block_until_ready(run(params, state, data))
  rel.assert_sharded_like_params(params, state)
  out = multihost_utils.process_allgather(
    {"params": params, "state": state, "losses": losses}, tiled=True
  )
  if process_id == 0:
    (out_dir / "multihost.msgpack").write_bytes(flax.serialization.to_bytes(out))
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3]))

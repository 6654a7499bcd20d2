"""Per-device optimizer-state memory on 1, 2, 4 and 8 devices, for every method.

Params of an MLP are sharded FSDP-style (each leaf's leading axis split over a
one-axis mesh) and every method of the registry's `METHODS`
(``optax_lr._registry``, which the contract suite runs too: all optax_lr
methods and their direction variants, plus the plain-SGD anchor) builds its
state from them. For each device count the script reports the bytes of
optimizer state held by the fullest device, summed over the
``addressable_shards`` of every state leaf, and the part of it in param-sized
buffers (leaves shaped like a param: tangents, window sums, checkpoints, the
direction's moments). That part falls exactly as 1/devices when the state is
sharded like the params; what remains is a few replicated scalars.

The state measured is the one a jitted, donated, data-parallel training step
returns (so it shows what XLA's sharding propagation gives the state), and,
with ``--quick``, the one ``init`` builds from the sharded params (no
compilation: a few seconds, for CI).

Usage::

    python -m benchmarks.memory            # after one jitted step
    python -m benchmarks.memory --quick    # init state only, small MLP

Writes ``results/memory.json`` (or ``--out``). The 8 devices are host-platform
CPU devices unless the machine has 8 accelerators.
"""

from __future__ import annotations

import os

# Before jax is imported anywhere: eight host devices to build meshes from.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  ).strip()

import argparse  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import optax_lr  # noqa: E402
from optax_lr._registry import METHODS  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DEVICE_COUNTS = (1, 2, 4, 8)
FULL_SIZES = (512, 2048, 2048, 64)
QUICK_SIZES = (64, 128, 64, 16)
BATCH = 64


def _devices():
  devices = jax.devices()
  if len(devices) < max(DEVICE_COUNTS):
    devices = jax.devices("cpu")
  return devices[: max(DEVICE_COUNTS)]


def _mlp(sizes):
  keys = jax.random.split(jax.random.PRNGKey(0), len(sizes) - 1)
  return [
    {
      "w": jax.random.normal(k, (m, n), jnp.float32) / np.sqrt(m),
      "b": jnp.zeros((n,), jnp.float32),
    }
    for k, m, n in zip(keys, sizes[:-1], sizes[1:])
  ]


def _loss(params, batch):
  x, y = batch
  for layer in params[:-1]:
    x = jnp.tanh(x @ layer["w"] + layer["b"])
  out = x @ params[-1]["w"] + params[-1]["b"]
  return jnp.mean(jnp.square(out - y))


def _train_step(case, tx):
  def step(params, state, batch):
    loss_fn = lambda p: _loss(p, batch)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params, **case.extra_args(loss_fn, params))
    params = optax_lr.apply_updates(params, updates, state)
    return params, optax_lr.observe(state, loss)  # an epoch end, for the epoch-level

  return jax.jit(step, donate_argnums=(0, 1))


def per_device_bytes(state, param_shapes) -> tuple[int, int]:
  """``(all, param-sized)`` bytes of ``state`` on its fullest device."""
  total, param_sized = {}, {}
  for leaf in jax.tree_util.tree_leaves(state):
    is_param_sized = jnp.ndim(leaf) >= 1 and jnp.shape(leaf) in param_shapes
    for shard in leaf.addressable_shards:
      total[shard.device] = total.get(shard.device, 0) + shard.data.nbytes
      if is_param_sized:
        param_sized[shard.device] = param_sized.get(shard.device, 0) + shard.data.nbytes
  fullest = max(total, key=total.get)
  return total[fullest], param_sized.get(fullest, 0)


def measure(case, sizes, num_devices, devices, step: bool) -> tuple[int, int]:
  mesh = Mesh(np.array(devices[:num_devices]), ("fsdp",))
  params = jax.device_put(_mlp(sizes), NamedSharding(mesh, P("fsdp")))
  param_shapes = {jnp.shape(p) for p in jax.tree_util.tree_leaves(params)}
  tx = case.make(case.parabola_lr)
  state = jax.block_until_ready(tx.init(params))
  if step:
    x = jax.random.normal(jax.random.PRNGKey(1), (BATCH, sizes[0]))
    y = jax.random.normal(jax.random.PRNGKey(2), (BATCH, sizes[-1]))
    batch = jax.device_put((x, y), NamedSharding(mesh, P("fsdp")))
    # One collective program in flight at a time (XLA:CPU's collectives
    # share a thread pool): block on each step.
    params, state = jax.block_until_ready(_train_step(case, tx)(params, state, batch))
  return per_device_bytes(state, param_shapes)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--quick", action="store_true", help="small MLP, the init state only (no compilation)"
  )
  parser.add_argument("--out", default=str(REPO / "results" / "memory.json"))
  args = parser.parse_args(argv)

  devices = _devices()
  if len(devices) < max(DEVICE_COUNTS):
    raise SystemExit(f"needs {max(DEVICE_COUNTS)} devices, found {len(devices)}")
  sizes = QUICK_SIZES if args.quick else FULL_SIZES
  step = not args.quick
  print(
    f"optimizer state per device, MLP {sizes}, params sharded over a "
    f"{'/'.join(map(str, DEVICE_COUNTS))}-device mesh "
    f"({'init state' if args.quick else 'after one jitted step'}; "
    f"{devices[0].platform} devices)"
  )
  header = "".join(f"{n:>12}" for n in DEVICE_COUNTS)
  print(f"{'method':38s}{header}   param-sized x devices / 1 device")
  results = {}
  for case in METHODS:
    rows = [measure(case, sizes, n, devices, step) for n in DEVICE_COUNTS]
    total = [r[0] for r in rows]
    param_sized = [r[1] for r in rows]
    if param_sized[0]:
      scaled = [p * n / param_sized[0] for p, n in zip(param_sized, DEVICE_COUNTS)]
      falls = all(abs(s - 1.0) < 1e-9 for s in scaled)
      verdict = ("falls as 1/devices" if falls else "does NOT fall as 1/devices") + (
        " (" + ", ".join(f"{s:.3f}" for s in scaled) + ")"
      )
    else:
      scaled, falls = None, None
      verdict = "no param-sized state"
    print(f"{case.name:38s}" + "".join(f"{b:>12,}" for b in total) + f"   {verdict}")
    results[case.name] = {
      "state_bytes_per_device": total,
      "param_sized_bytes_per_device": param_sized,
      "param_sized_times_devices_over_one_device": scaled,
      "falls_as_one_over_devices": falls,
    }
  report = {
    "devices": list(DEVICE_COUNTS),
    "platform": devices[0].platform,
    "mlp_sizes": list(sizes),
    "measured": "init state" if args.quick else "state after one jitted step",
    "methods": results,
  }
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=2))
  print(f"wrote {out}")
  return report


if __name__ == "__main__":
  main()

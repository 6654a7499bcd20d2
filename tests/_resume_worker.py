"""The two processes of `test_resume.py`: the original run, and the restart.

``python tests/_resume_worker.py save DIR`` trains every method of the
contract suite's `METHODS` for `RESUME_SAVED_AFTER` steps, saves params,
optimizer state and step index with `flax.serialization` (``DIR/NAME.msgpack``)
and with orbax-checkpoint (``DIR/NAME.orbax/``), then runs on, from the very
arrays it saved, to `RESUME_TOTAL_STEPS`: the uninterrupted run, written to
``DIR/NAME.uninterrupted``.

``python tests/_resume_worker.py resume DIR`` is a fresh process that has
never seen those values: for each method and format it restores the
checkpoint onto templates built from scratch, runs the remaining steps with
the same jitted step and writes ``DIR/NAME.FORMAT.resumed``.

Outputs are `flax.serialization` blobs of ``{"params", "state", "losses"}``.
Both processes are started by the test with the same environment: the same
XLA flags (conftest.py's 8 host devices) and the same JAX persistent
compilation cache, from which the restart loads the compiled steps as a
production restart would. Promotion is strict, as in conftest.py. Importing
this module does nothing (pytest imports it for doctests).
"""

from __future__ import annotations

import os
import pathlib
import sys

FORMATS = ("flax", "orbax")


def _write(path: pathlib.Path, params, state, losses) -> None:
  import flax.serialization  # pylint: disable=g-import-not-at-top

  out = {"params": params, "state": state, "losses": losses}
  path.write_bytes(flax.serialization.to_bytes(out))


def save(root: pathlib.Path) -> None:
  # pylint: disable=g-import-not-at-top
  import flax.serialization
  import jax.numpy as jnp
  import orbax.checkpoint as ocp

  import _reliability as rel

  for case in rel.METHODS:
    tx, step = rel.resume_step(case)
    params = rel.mlp_params()
    params, state, _ = rel.resume_run(step, params, tx.init(params), 0, rel.RESUME_SAVED_AFTER)
    checkpoint = {
      "params": params,
      "state": state,
      "step": jnp.asarray(rel.RESUME_SAVED_AFTER, jnp.int32),
    }
    (root / f"{case.name}.msgpack").write_bytes(flax.serialization.to_bytes(checkpoint))
    checkpointer = ocp.StandardCheckpointer()
    try:
      checkpointer.save(root / f"{case.name}.orbax", checkpoint)
      checkpointer.wait_until_finished()
    finally:
      checkpointer.close()
    # The step donates params and state: the run goes on from the arrays
    # just saved, which are consumed only now.
    params, state, losses = rel.resume_run(
      step, params, state, rel.RESUME_SAVED_AFTER, rel.RESUME_TOTAL_STEPS
    )
    _write(root / f"{case.name}.uninterrupted", params, state, losses)


def _restore(fmt: str, path: pathlib.Path, template):
  # pylint: disable=g-import-not-at-top
  import flax.serialization
  import jax
  import orbax.checkpoint as ocp

  if fmt == "flax":
    return flax.serialization.from_bytes(template, path.read_bytes())
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
  checkpointer = ocp.StandardCheckpointer()
  try:
    return checkpointer.restore(path, abstract)
  finally:
    checkpointer.close()


def resume(root: pathlib.Path) -> None:
  import _reliability as rel  # pylint: disable=g-import-not-at-top

  paths = {"flax": "{}.msgpack", "orbax": "{}.orbax"}
  for case in rel.METHODS:
    tx, step = rel.resume_step(case)
    for fmt in FORMATS:
      saved = _restore(fmt, root / paths[fmt].format(case.name), rel.resume_template(tx))
      params, state, losses = rel.resume_run(
        step,
        saved["params"],
        saved["state"],
        int(saved["step"]),
        rel.RESUME_TOTAL_STEPS,
      )
      _write(root / f"{case.name}.{fmt}.resumed", params, state, losses)


def main(mode: str, directory: pathlib.Path) -> None:
  if "--xla_force_host_platform_device_count=8" not in os.environ.get("XLA_FLAGS", ""):
    raise SystemExit("started by tests/test_resume.py, with the test's XLA_FLAGS")
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_numpy_dtype_promotion", "strict")
  {"save": save, "resume": resume}[mode](directory.resolve())


if __name__ == "__main__":
  main(sys.argv[1], pathlib.Path(sys.argv[2]))

"""Test-session set-up, loaded by pytest before any test module imports jax.

* Eight host-platform CPU devices, so sharding tests can build a real mesh
  (computations that are not sharded still run on device 0).
* Strict dtype promotion: an implicit bf16 -> f32 (or f32 -> f64) promotion in
  the library is a bug, and strict mode turns it into an error.
"""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_numpy_dtype_promotion", "strict")

# The notebooks' jupytext sources are scripts, not test modules: importing
# them (`pytest .` with --doctest-modules) would run the notebooks.
collect_ignore = ["notebooks"]

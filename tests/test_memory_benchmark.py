"""`python -m benchmarks.memory --quick` runs and shows state memory falling as 1/devices.

The script is run as CI would run it, in a fresh process without the test
session's XLA flags, so it must create its 8 host devices itself.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import _reliability as rel

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_memory_benchmark_quick(tmp_path):
  out = tmp_path / "memory.json"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  done = subprocess.run(
    [sys.executable, "-m", "benchmarks.memory", "--quick", "--out", str(out)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-4000:]
  assert "falls as 1/devices" in done.stdout
  report = json.loads(out.read_text())
  assert report["devices"] == [1, 2, 4, 8]
  assert set(report["methods"]) == {case.name for case in rel.METHODS}
  sharded = 0
  for name, row in report["methods"].items():
    param_sized = row["param_sized_bytes_per_device"]
    if param_sized[0] == 0:
      continue  # no param-sized buffer (plain SGD, ASLR over SGD)
    sharded += 1
    # Exactly 1/n of the one-device bytes on each of n devices...
    assert [p * n for p, n in zip(param_sized, report["devices"])] == [param_sized[0]] * 4, name
    assert row["falls_as_one_over_devices"] is True, name
    # ...and the rest of the state is a few replicated scalars.
    replicated = [t - p for t, p in zip(row["state_bytes_per_device"], param_sized)]
    assert max(replicated) < 1024, name
  assert sharded >= len(rel.METHODS) - 3

"""Every benchmark script runs on a tiny setting, so that none of them rots.

Each script's ``main(argv)`` runs in-process with its smallest flags and
writes its JSON (and PNG, when matplotlib is installed) under ``tmp_path``.
The scripts run as users run them, with standard dtype promotion. The
optional extras (matplotlib, tqdm, mnist1d: ``pip install -e ".[examples]"``)
are used when installed; without them the scripts skip the figure, the
progress bar and the MNIST-1D task, which is what the checks below expect.
"""

from __future__ import annotations

import importlib.util
import json
import math

import jax
import numpy as np
import pytest

from benchmarks import _data
from benchmarks import _methods
from benchmarks import _models
from benchmarks import _train

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(autouse=True)
def _standard_promotion():
  with jax.numpy_dtype_promotion("standard"):
    yield
  _train.fast_compilation(False)  # --quick turned it on


def _load(path):
  with open(path) as f:
    return json.load(f)


def _outputs(tmp_path, name):
  return ["--out", str(tmp_path / f"{name}.json"), "--png", str(tmp_path / f"{name}.png")]


def _check_png(tmp_path, name):
  assert (tmp_path / f"{name}.png").exists() == HAVE_MATPLOTLIB


def test_registry_is_consistent():
  names = [m.name for m in _methods.COMPARE_METHODS]
  assert len(names) == len(set(names))
  assert {m.name for m in _methods.OPTAX_LR_METHODS} >= {
      "hd", "rtho", "marthe", "newton_lr", "aslr", "aalr"}
  # The optax methods the issue names are all compared.
  assert {"sgd", "reduce_on_plateau", "prodigy", "dog", "mechanize",
          "schedule_free_sgd"} <= set(names)
  anchors = {m.name for m in _methods.SPEED_ANCHORS}
  assert {"sgd", "sgd_momentum", "adam", "reduce_on_plateau", "prodigy",
          "dadapt_adamw", "dog", "mechanize", "grad_hvp_sgd"} == anchors
  with pytest.raises(ValueError, match="unknown methods"):
    _methods.by_name(_methods.COMPARE_METHODS, ["no_such_method"])
  with pytest.raises(ValueError, match="unknown extra args"):
    _methods.Method("bad", lambda lr, n: None, needs=("grads",))


def test_grouped_runs_equal_separate_runs():
  """Rates that share a compilation (stacked states, vmap) train exactly as
  each rate alone; a rate closed over as a constant gets its own."""
  _train.fast_compilation()
  splits = _data.digits()
  model = _models.mlp((64,), (8,))
  setting = _train.setting_for(splits, 1, 100)
  hd = _methods.by_name(_methods.COMPARE_METHODS, ["hd"])[0]
  together = _train.train_rates(model, hd, [0.01, 0.3], splits, setting, seeds=(0, 1))
  alone = _train.train_rates(model, hd, [0.3], splits, setting, seeds=(0, 1))
  assert together[0].group == together[1].group
  np.testing.assert_allclose(together[1].history["lr"], alone[0].history["lr"], rtol=1e-5)
  np.testing.assert_allclose(together[1].history["test_loss"], alone[0].history["test_loss"],
                             rtol=1e-5)
  # Different rates really trained differently, and the seeds differ.
  assert not np.allclose(together[0].history["lr"], together[1].history["lr"])
  assert not np.allclose(together[1].history["train_loss"][0],
                         together[1].history["train_loss"][1])
  dog = _methods.by_name(_methods.COMPARE_METHODS, ["dog"])[0]
  runs = _train.train_rates(model, dog, [0.01, 0.3], splits, setting)
  assert runs[0].history["lr"][0, 0] == pytest.approx(0.01)  # dog's first step
  assert runs[0].group != runs[1].group


def test_score_and_summary():
  scored = _train.score(np.array([0.5, np.nan, np.inf]), 10)
  np.testing.assert_allclose(scored, [0.5, math.log(10), math.log(10)])
  stats = _train.summary(np.array([1.0, 3.0]))
  assert stats == {"mean": 2.0, "std": 1.0, "worst": 3.0, "spread": 2.0}


def test_compare(tmp_path, capsys):
  from benchmarks import compare  # pylint: disable=g-import-not-at-top
  # Every method end to end; the step timing (the harness's) is tested by
  # test_speed.
  report = compare.main(["--quick", "--rates", "0.1", "--timing-rounds", "0",
                         "--no-progress"] + _outputs(tmp_path, "compare"))
  out = capsys.readouterr().out
  saved = _load(tmp_path / "compare.json")
  assert set(saved["methods"]) == {m.name for m in _methods.COMPARE_METHODS}
  steps = report["setting"]["epochs"] * report["setting"]["steps_per_epoch"]
  for m in _methods.COMPARE_METHODS:
    entry = report["methods"][m.name]
    assert m.name in out
    (run,) = entry["runs"]
    assert len(run["lr_per_step"]) == steps
    assert len(run["test_loss_per_epoch"]) == report["setting"]["epochs"]
    assert np.all(np.isfinite(run["lr_per_step"]))
  sgd = report["methods"]["sgd"]["runs"][0]
  np.testing.assert_allclose(sgd["lr_per_step"], 0.1, rtol=1e-6)
  # Two epochs of SGD at 0.1 on digits learn something: below chance level.
  assert sgd["final_test_loss"] < math.log(10)
  assert report["methods"]["sgd_hand_picked"]["runs"][0]["initial_rate"] == 0.1
  _check_png(tmp_path, "compare")


def test_speed(tmp_path, capsys):
  from benchmarks import speed  # pylint: disable=g-import-not-at-top
  report = speed.main(["--quick", "--models", "cnn", "--methods", "sgd", "grad_hvp_sgd",
                       "marthe", "aalr"] + _outputs(tmp_path, "speed"))
  out = capsys.readouterr().out
  cnn = _load(tmp_path / "speed.json")["models"]["cnn"]
  assert set(cnn["median_ratio_to_sgd"]) == {"sgd", "grad_hvp_sgd", "marthe", "aalr"}
  assert cnn["median_ratio_to_sgd"]["sgd"] == 1.0
  targets = {(t["method"], t["baseline"]) for t in report["models"]["cnn"]["targets"]}
  assert targets == {("marthe", "grad_hvp_sgd"), ("aalr", "sgd")}
  assert "target marthe / grad_hvp_sgd" in out
  _check_png(tmp_path, "speed")


def test_robustness(tmp_path):
  from benchmarks import robustness  # pylint: disable=g-import-not-at-top
  # digits runs through the same code in test_compare; MNIST-1D when installed.
  dataset = "mnist1d" if _data.have_mnist1d() else "digits"
  robustness.main(["--quick", "--datasets", dataset, "--methods", "sgd", "aslr",
                   "--no-progress"] + _outputs(tmp_path, "robustness"))
  saved = _load(tmp_path / "robustness.json")
  expected = {dataset}
  assert set(saved["datasets"]) == expected
  for name in expected:
    methods = saved["datasets"][name]["methods"]
    assert set(methods) == {"sgd", "aslr"}
    for entry in methods.values():
      assert np.asarray(entry["scored_loss"]).shape == (2, 2)  # rates x seeds
      stats = entry["across_rates"]
      assert stats["worst"] >= stats["mean"] >= 0
  _check_png(tmp_path, "robustness")


def test_paper_marthe(tmp_path):
  from benchmarks import paper_marthe  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="unknown methods"):
    paper_marthe.main(["--quick", "--methods", "adam"])
  report = paper_marthe.main(["--quick", "--steps", "8", "--seeds", "0", "--betas", "1e-2",
                              "--methods", "hd", "marthe_mu0.99", "--lrs-iters", "1",
                              "--no-progress"] + _outputs(tmp_path, "paper_marthe"))
  saved = _load(tmp_path / "paper_marthe.json")
  assert set(saved["methods"]) == {"constant", "hd", "marthe_mu0.99"}
  constant = report["methods"]["constant"]["by_hyper"][0]
  np.testing.assert_allclose(constant["rates_seed0"], paper_marthe.ETA0, rtol=1e-6)
  (schedule,) = report["lrs_opt"]["schedules"].values()
  assert schedule.shape == (8,) and np.all(schedule >= 0)
  assert 0 <= saved["lrs_opt"]["valid_acc"][0] <= 1
  _check_png(tmp_path, "paper_marthe")


def test_paper_toys(tmp_path):
  from benchmarks import paper_toys  # pylint: disable=g-import-not-at-top
  report = paper_toys.main(["--quick", "--betas", "1e-5", "1e-1"]
                           + _outputs(tmp_path, "paper_toys"))
  beale = _load(tmp_path / "paper_toys.json")["functions"]["beale"]
  for name in ("hd", "rtho", "marthe"):
    small, large = beale["methods"][name]["by_beta"]
    # A tiny β stays near gradient descent and improves on the start; β = 0.1
    # blows up on Beale's steep walls (the paper's "values that diverge").
    assert not small["diverged"] and small["best"] < 1.0
    assert large["diverged"]
  assert report["functions"]["bukin_smoothed"]["minimum"] == pytest.approx(
      math.sqrt(math.sqrt(paper_toys.BUKIN_EPS) + paper_toys.BUKIN_EPS))
  _check_png(tmp_path, "paper_toys")

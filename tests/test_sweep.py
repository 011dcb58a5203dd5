"""Sweeps: grid points, one program per algorithm, a point in a grid equals its solo run."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from fedqs_jax import config as config_lib
from fedqs_jax import data as data_lib
from fedqs_jax import program, run, sweep
from fedqs_jax.errors import ConfigError
from tests.common import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_points_are_the_product_of_the_swept_lists():
  config = tiny_config(**{"sweep.local.lr": "0.1,0.2", "sweep.fedbuff.beta": "0,0.5,1"})
  grid = sweep.points(config)
  assert len(grid) == 6
  assert {(p["local.lr"], p["fedbuff.beta"]) for p in grid} == {
    (lr, b) for lr in (0.1, 0.2) for b in (0.0, 0.5, 1.0)
  }
  assert sweep.points(tiny_config()) == [{}]
  assert sweep.restrict(grid, ["local.lr"]) == [{"local.lr": 0.1}, {"local.lr": 0.2}]
  assert sweep.restrict(grid, ["local.clip"]) == [{}]
  assert sweep.label({"local.lr": 0.1, "fedbuff.beta": 0.5}) == "local.lr=0.1,fedbuff.beta=0.5"


@pytest.mark.parametrize(
  "overrides,match",
  [
    ({"sweep.local.lr": "0.1,fast"}, "sweep.local.lr"),
    ({"sweep.fedbuff.beta": "0,0.5"}, "sweep.fedbuff.beta"),  # fedavg has no beta
    ({"sweep.local.lr": "0.1,0"}, "sweep.local.lr"),
    ({"sweep.local.momentum": "0.5,1.0"}, "sweep.local.momentum"),
  ],
)
def test_bad_sweeps_are_refused(overrides, match):
  with pytest.raises(ConfigError, match=match):
    config_lib.validate(tiny_config(**overrides))


def test_a_point_in_a_grid_equals_its_solo_run():
  data = data_lib.load(tiny_config().data, 0)
  grid_config = tiny_config(**{"sweep.local.lr": "0.05,0.1", "num_seeds": 2})
  grid = run.train(grid_config, "fedavg", data, program.make_schedule(grid_config))
  assert grid["chunk_traces"] == 1  # 2 points x 2 seeds: one compile
  assert [(p["local.lr"], seed) for p, seed, _ in grid["grid"]] == [
    (0.05, 0), (0.05, 1), (0.1, 0), (0.1, 1),
  ]  # fmt: skip
  solo_config = tiny_config(**{"local.lr": 0.1, "seed": 1})
  solo = run.train(solo_config, "fedavg", data, program.make_schedule(solo_config))
  np.testing.assert_allclose(grid["test_loss"][3], solo["test_loss"][0], rtol=1e-5)
  np.testing.assert_allclose(grid["test_accuracy"][3], solo["test_accuracy"][0], atol=1e-6)
  np.testing.assert_array_equal(grid["client_steps"][3], solo["client_steps"][0])
  # The learning rate really differs between points of the same seed.
  assert not np.allclose(grid["test_loss"][1], grid["test_loss"][3])


def test_sweep_results_carry_the_hyperparameters(tmp_path):
  config = tiny_config(
    **{"algorithms": "fedavg,fedbuff", "sweep.local.lr": "0.05,0.1", "sweep.fedbuff.beta": "0,0.5"}
  )
  run.run(config, str(tmp_path))
  with open(tmp_path / "summary.csv") as f:
    rows = list(csv.DictReader(f))
  fedavg = [r for r in rows if r["algorithm"] == "fedavg"]
  fedbuff = [r for r in rows if r["algorithm"] == "fedbuff"]
  assert len(fedavg) == 2 and len(fedbuff) == 4  # fedavg ignores beta
  assert {r["fedbuff.beta"] for r in fedavg} == {""}
  assert {(r["local.lr"], r["fedbuff.beta"]) for r in fedbuff} == {
    ("0.05", "0.0"), ("0.05", "0.5"), ("0.1", "0.0"), ("0.1", "0.5"),
  }  # fmt: skip
  assert {r["sweep"] for r in fedbuff} >= {"fedbuff.beta=0,local.lr=0.1"}

  # The plot CLI draws the curves and the sensitivity map of the two swept values.
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.plot", f"--workdir={tmp_path}", "--algorithm=fedbuff"],
    cwd=ROOT, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-2000:]
  for name in ("curves_fedbuff.png", "sensitivity_fedbuff_fedbuff.beta_local.lr.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
  bad = subprocess.run(
    [sys.executable, "-m", "experiments.plot", f"--workdir={tmp_path}", "--x=local.lr",
     "--y=fedasync.alpha"],
    cwd=ROOT, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert bad.returncode != 0 and "'fedasync.alpha' is not swept" in bad.stderr


def test_product_and_zip_compose_and_a_config_file_declares_its_sweep(tmp_path):
  grid = sweep.product(
    sweep.axis("local.lr", [0.1, 0.2]),
    sweep.zip(sweep.axis("fedqs.a", [1, 2]), sweep.axis("fedqs.k", [3, 4])),
  )
  assert grid == [
    {"local.lr": 0.1, "fedqs.a": 1.0, "fedqs.k": 3.0},
    {"local.lr": 0.1, "fedqs.a": 2.0, "fedqs.k": 4.0},
    {"local.lr": 0.2, "fedqs.a": 1.0, "fedqs.k": 3.0},
    {"local.lr": 0.2, "fedqs.a": 2.0, "fedqs.k": 4.0},
  ]
  with pytest.raises(ConfigError, match="equal length"):
    sweep.zip(sweep.axis("fedqs.a", [1, 2]), sweep.axis("fedqs.k", [3]))

  path = tmp_path / "my_config.py"
  path.write_text(
    "from fedqs_jax import sweep\n"
    "from tests.common import tiny_config as get_config\n"
    "def get_sweep():\n"
    "  return sweep.zip(sweep.axis('local.lr', [0.05, 0.1]),\n"
    "                   sweep.axis('local.momentum', [0.0, 0.5]))\n"
  )
  config = sweep.with_file_sweep(tiny_config(**{"sweep.local.clip": "1,2"}), str(path))
  assert sweep.points(config) == [  # the file's points x the command line's sweep
    {"local.lr": 0.05, "local.momentum": 0.0, "local.clip": 1.0},
    {"local.lr": 0.05, "local.momentum": 0.0, "local.clip": 2.0},
    {"local.lr": 0.1, "local.momentum": 0.5, "local.clip": 1.0},
    {"local.lr": 0.1, "local.momentum": 0.5, "local.clip": 2.0},
  ]
  config_lib.validate(config)
  with config.unlocked():
    config.sweep_points = [{"local.lr": 0.1, "nonsense": 1.0}]
  with pytest.raises(ConfigError, match="sweep.nonsense"):
    config_lib.validate(config)
  # A file without get_sweep leaves the config alone.
  plain = tmp_path / "plain.py"
  plain.write_text("from tests.common import tiny_config as get_config\n")
  assert sweep.points(sweep.with_file_sweep(tiny_config(), str(plain))) == [{}]


def test_a_diverging_point_is_frozen_and_flagged_while_the_others_finish(tmp_path):
  data = data_lib.load(tiny_config().data, 0)
  config = tiny_config(**{"sweep.local.lr": "0.1,1e30", "local.clip": 1e30, "algorithms": "fedsgd"})
  out = run.train(config, "fedsgd", data, program.make_schedule(config))
  assert not out["diverged"][0].any()
  assert out["diverged"][1].all()  # non-finite from round 1 on: frozen ever since
  assert np.all(np.isfinite(out["test_loss"]))  # the frozen point still evaluates its last state
  assert len(set(out["test_loss"][1].tolist())) == 1  # ... which no longer changes
  solo_config = tiny_config(**{"local.clip": 1e30, "algorithms": "fedsgd"})
  solo = run.train(solo_config, "fedsgd", data, program.make_schedule(solo_config))
  np.testing.assert_allclose(out["test_loss"][0], solo["test_loss"][0], rtol=1e-5)
  assert not solo["diverged"].any()

  run.run(config, str(tmp_path))
  with open(tmp_path / "summary.csv") as f:
    rows = {r["local.lr"]: r for r in csv.DictReader(f)}
  assert rows["1e+30"]["diverged_round"] == "1"
  assert rows["0.1"]["diverged_round"] == ""
  with open(tmp_path / "metrics.csv") as f:
    flags = {(r["local.lr"], r["diverged"]) for r in csv.DictReader(f)}
  assert flags == {("0.1", "False"), ("1e+30", "True")}


def test_static_fields_split_the_grid_into_groups_that_equal_their_solo_runs(tmp_path):
  config = tiny_config(**{"num_seeds": 2})
  with config.unlocked():
    config.sweep_points = sweep.product(
      sweep.axis("schedule.buffer_size", [2, 4]), sweep.axis("local.lr", [0.05, 0.1])
    )
  groups = sweep.groups(config)
  assert [static for static, _ in groups] == [
    {"schedule.buffer_size": 2}, {"schedule.buffer_size": 4},
  ]  # fmt: skip
  assert [g.schedule.buffer_size for _, g in groups] == [2, 4]
  assert all(g.sweep_points == [{"local.lr": 0.05}, {"local.lr": 0.1}] for _, g in groups)

  out = run.run(config, str(tmp_path))
  assert set(out["results"]) == {"fedavg[schedule.buffer_size=2]", "fedavg[schedule.buffer_size=4]"}
  assert all(r["chunk_traces"] == 1 for r in out["results"].values())  # 2 lr x 2 seeds each
  solo_config = tiny_config(**{"schedule.buffer_size": 2, "local.lr": 0.1, "seed": 1})
  data = data_lib.load(solo_config.data, 0)
  solo = run.train(solo_config, "fedavg", data, program.make_schedule(solo_config))
  grouped = out["results"]["fedavg[schedule.buffer_size=2]"]
  assert [(p["local.lr"], seed) for p, seed, _ in grouped["grid"]][3] == (0.1, 1)
  np.testing.assert_allclose(grouped["test_loss"][3], solo["test_loss"][0], rtol=1e-5)
  with open(tmp_path / "summary.csv") as f:
    rows = list(csv.DictReader(f))
  assert {(r["schedule.buffer_size"], r["local.lr"]) for r in rows} == {
    ("2", "0.05"), ("2", "0.1"), ("4", "0.05"), ("4", "0.1"),
  }  # fmt: skip

  with config.unlocked():
    config.sweep_points = sweep.axis("schedule.no_such_field", [1, 2])
  with pytest.raises(ConfigError, match="schedule.no_such_field"):
    run.run(config, str(tmp_path / "bad"))
  assert not (tmp_path / "bad").exists()

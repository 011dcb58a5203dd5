"""experiments/configs/main_table.py: every task's variant, and a shrunk digits table run."""

import io

import pytest

from experiments.configs import main_table
from fedqs_jax import config as config_lib
from fedqs_jax import run
from tests.common import SHRINK

# The paper's main-table methods, then the other baselines the table compares.
METHODS = ["fedavg", "m_step", "fedqs_avg", "fedsgd", "wkafl", "fedqs_sgd"]
METHODS += ["safa", "fedat", "fedac", "fedbuff", "ca2fl", "fadas"]


@pytest.mark.parametrize("task", main_table.TASKS)
def test_every_variant_validates_with_every_method(task):
  config = main_table.get_config(task)
  config_lib.validate(config)
  assert config_lib.algorithm_names(config) == METHODS
  assert config.num_seeds == 3
  assert config.data.validation_fraction > 0  # FedQS's SBC check; every method gets the same


def test_unknown_task_is_refused():
  with pytest.raises(ValueError, match="main_table.py takes"):
    main_table.get_config("mnist")


def test_shrunk_digits_table_trains_every_method_on_one_schedule_per_seed(tmp_path):
  config = main_table.get_config("digits")
  shrink = {**SHRINK, "schedule.num_rounds": 4, "engine.eval_every": 2}
  del shrink["algorithms"]
  for key, value in shrink.items():
    section, field = key.split(".")
    config[section][field] = value
  config.num_seeds = 2  # 12 compiles dominate; two seeds still check "per seed"
  out = run.run(config, str(tmp_path), stream=io.StringIO())

  seeds = [config.seed + s for s in range(config.num_seeds)]
  rows = out["summary"]
  assert sorted((r["algorithm"], r["seed"]) for r in rows) == sorted(
    (m, s) for m in METHODS for s in seeds
  )
  assert (tmp_path / "summary.csv").read_text().count("\n") == 1 + len(rows)
  # One schedule per seed, trained on by every method: in each evaluation window the same
  # clients were dispatched (so the same local step count, from their data sizes), at
  # the same simulated times and staleness.
  keys = ("round", "time", "staleness_mean", "staleness_max", "dispatched", "client_steps")
  for s in seeds:
    windows = {
      m: [
        tuple(r[k] for k in keys) for r in out["metrics"] if (r["algorithm"], r["seed"]) == (m, s)
      ]
      for m in METHODS
    }
    assert len(windows["fedavg"]) == 2 and windows["fedavg"][0][-1] > 0
    assert all(w == windows["fedavg"] for w in windows.values()), windows

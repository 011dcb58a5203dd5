"""FedSQ in the simulator: pretraining, warm starts, the dual-mode model transform."""

import csv
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import pretrain as pretrain_cli
from fedqs_jax import algorithms, models, pretrained, program, report, run
from fedqs_jax import config as config_lib
from fedqs_jax import data as data_lib
from fedqs_jax.errors import ConfigError
from tests.common import ROOT, finish, start_cli, tiny_args, tiny_config


def pretrain_config(**overrides):
  config = tiny_config(**{"data.num_clients": 1, "data.partition": "iid", **overrides})
  config.pretrain = ml_collections.ConfigDict(dict(epochs=3, batch_size=32, lr=0.1, momentum=0.9))
  return config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A tiny MLP pretrained on digits (the mechanism is the same for the mnist8 source)."""
  folder = str(tmp_path_factory.mktemp("pretrained"))
  out = pretrain_cli.pretrain(pretrain_config(), folder, stream=open(os.devnull, "w"))
  assert out["test_accuracy"] > 0.5
  return folder, out["variables"]


def warm(folder, **overrides):
  return tiny_config(**{"model.init_checkpoint": folder, **overrides})


def test_checkpoint_round_trip_gives_the_pretrained_model(checkpoint):
  folder, variables = checkpoint
  config = warm(folder)
  data = data_lib.load(config.data, 0)
  _, fns = program.config_model_fns(config, data.num_classes, data.x_train[:1])
  for seed in (0, 1):  # every seed starts from the same weights
    loaded = fns.init(jax.random.PRNGKey(seed), data.x_train[:1])
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  np.testing.assert_array_equal(fns.apply(loaded, data.x_test), fns.apply(variables, data.x_test))


def test_fedsq_at_initialisation_is_the_pretrained_model(checkpoint):
  folder, variables = checkpoint
  config = warm(folder, **{"model.fedsq": True})
  data = data_lib.load(config.data, 0)
  module, plain = program.config_model_fns(warm(folder), data.num_classes, data.x_train[:1])
  _, dual = program.config_model_fns(config, data.num_classes, data.x_train[:1])
  q = dual.init(jax.random.PRNGKey(0), data.x_train[:1])
  np.testing.assert_array_equal(dual.apply(q, data.x_test), plain.apply(variables, data.x_test))
  logits, _ = dual.train(q, data.x_test, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(logits, plain.apply(variables, data.x_test))
  # Moving the quantitative copy changes the values but not the gates: the dual model
  # is then not the plain model at the moved weights.
  moved = jax.tree.map(lambda w: w * 1.5 - 0.1, q)
  assert not np.allclose(dual.apply(moved, data.x_test), plain.apply(moved, data.x_test))
  jax.tree.map(np.testing.assert_array_equal, dual.constants, variables)


def test_a_fedsq_run_keeps_the_structural_copy_and_differs_from_plain_fine_tuning(checkpoint):
  folder, variables = checkpoint
  data = data_lib.load(tiny_config().data, 0)
  config = warm(folder)
  sched = program.make_schedule(config)
  plain = run.train(config, "fedavg", data, sched)
  fedsq_config = warm(folder, **{"model.fedsq": True})
  fedsq = run.train(fedsq_config, "fedavg", data, sched)
  prog = program.build_program(fedsq_config, "fedavg", data, sched.num_slots)
  jax.tree.map(np.testing.assert_array_equal, prog.model.constants, variables)
  assert np.all(np.isfinite(fedsq["test_loss"]))
  assert not np.array_equal(fedsq["test_loss"], plain["test_loss"])
  assert fedsq["test_accuracy"][0, 0] > 0.5  # it starts from the pretrained model


def test_a_different_class_count_gets_a_fresh_head(tmp_path):
  config = tiny_config()
  data = data_lib.load(config.data, 0)
  three = models.MLP(num_classes=3, hidden=(8,))
  source = three.init(jax.random.PRNGKey(5), data.x_train[:1])["params"]
  pretrained.save(str(tmp_path), source, config.model, 3, {"data": "handmade"})
  _, fns = program.config_model_fns(warm(str(tmp_path)), data.num_classes, data.x_train[:1])
  a = fns.init(jax.random.PRNGKey(0), data.x_train[:1])
  b = fns.init(jax.random.PRNGKey(1), data.x_train[:1])
  np.testing.assert_array_equal(a["Dense_0"]["kernel"], source["Dense_0"]["kernel"])
  assert a["Dense_1"]["kernel"].shape == (8, 10)
  assert not np.array_equal(a["Dense_1"]["kernel"], b["Dense_1"]["kernel"])  # drawn per seed


def test_bad_warm_starts_are_refused_before_anything_compiles(checkpoint, tmp_path):
  folder, _ = checkpoint
  with pytest.raises(ConfigError, match="model.init_checkpoint"):
    config_lib.validate(warm(str(tmp_path / "missing")))
  with pytest.raises(ConfigError, match="model.init_checkpoint"):
    config_lib.validate(warm(str(tmp_path)))  # a folder, but no pretrained model in it
  with pytest.raises(ConfigError, match="model.init_checkpoint"):
    config_lib.validate(tiny_config(**{"model.fedsq": True}))  # FedSQ needs a checkpoint
  with pytest.raises(ConfigError, match="lstm"):
    config_lib.validate(
      tiny_config(
        **{
          "model.fedsq": True,
          "model.name": "lstm",
          "data.name": "shakespeare",
          "data.partition": "role",
        }
      )
    )
  data = data_lib.load(tiny_config().data, 0)
  with pytest.raises(ConfigError, match=r"Dense_0.*\(64, 8\).*\(64, 16\)"):
    program.build_program(warm(folder, **{"model.hidden": (16,)}), "fedavg", data, 12)
  # Through the CLI: one line, exit 2, nothing written.
  args = tiny_args(**{"model.init_checkpoint": folder, "model.hidden": "(16,)"})
  proc = start_cli(f"--workdir={tmp_path / 'run'}", *args)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 2 and err.count("\n") == 1 and "Dense_0" in err, err
  assert not (tmp_path / "run").exists()


def test_fedsq_combines_with_every_registered_algorithm_through_the_cli(checkpoint, tmp_path):
  folder, _ = checkpoint
  names = algorithms.names()
  path = tmp_path / "fedsq_all.py"
  path.write_text(
    "from tests.common import tiny_config\n"
    "def get_config():\n"
    "  config = tiny_config(**{'data.validation_fraction': 0.2, 'schedule.num_rounds': 10})\n"
    f"  config.algorithms = {','.join('fedsq_' + n for n in names)!r}\n"
    "  config.variants = {\n"
    f"    'fedsq_' + n: {{'base': n, 'model': {{'fedsq': True}}}} for n in {names!r}\n"
    "  }\n"
    f"  config.model.init_checkpoint = {folder!r}\n"
    "  return config\n"
  )
  finish(start_cli(f"--config={path}", f"--workdir={tmp_path / 'run'}"))
  rows = list(csv.DictReader(open(tmp_path / "run" / "summary.csv")))
  assert sorted(r["algorithm"] for r in rows) == sorted("fedsq_" + n for n in names)
  assert all(np.isfinite(float(r["final_accuracy"])) for r in rows)
  # FedSQ's table: one line per method, BVA and its round as the summary says.
  lines = report.best_accuracy_table(rows).splitlines()
  assert len(lines) == 1 + len(names)
  first = next(r for r in rows if r["algorithm"] == "fedsq_" + names[0])
  assert f"{100 * float(first['best_accuracy']):.2f} +- 0.00" in lines[1]


def test_pretrain_cli_writes_a_checkpoint_a_run_starts_from(tmp_path):
  args = [f"--config.{k}={v}" for k, v in
          {"data.num_clients": 1, "data.partition": "iid", "pretrain.epochs": 2,
           "data.name": "digits", "model.hidden": "(8,)"}.items()]  # fmt: skip
  import subprocess
  import sys

  proc = subprocess.run(
    [sys.executable, "-m", "experiments.pretrain", f"--workdir={tmp_path}", *args],
    cwd=ROOT, capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "epoch 2/2" in proc.stdout and (tmp_path / "model.json").exists()
  bad = subprocess.run(
    [sys.executable, "-m", "experiments.pretrain", f"--workdir={tmp_path}",
     "--config.pretrain.lr=-1"],
    cwd=ROOT, capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert bad.returncode == 2 and "pretrain.lr" in bad.stderr
  like = jax.eval_shape(
    lambda: models.MLP(10, (8,)).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))["params"]
  )
  variables = pretrained.load(str(tmp_path), like)
  assert variables["Dense_0"]["kernel"].shape == (64, 8)

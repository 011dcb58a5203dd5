"""The memory estimate counts what the engine allocates, and a run that cannot fit is refused."""

import jax
import pytest

from fedqs_jax import data as data_lib
from fedqs_jax import memory, models, run
from fedqs_jax.errors import ConfigError
from tests.common import tiny_config


def setup(**overrides):
  config = tiny_config(**overrides)
  data = data_lib.load(config.data, config.data.seed)
  sched = run.make_schedule(config)
  module = models.build(config.model, data.num_classes)
  params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), data.x_train[:1])["params"])
  return config, data, sched, memory.tree_bytes(params)


def test_estimate_counts_model_copies_slots_and_training_set():
  config, data, sched, p = setup()
  est = run.memory_estimate(config, "fedavg", data, sched)
  width = max(sched.init_client.shape[-1], sched.dispatch_client.shape[-1])
  assert est["per_point"] == 2 * p + sched.num_slots * p + width * 4 * p
  assert est["shared_data"] == memory.tree_bytes(data)
  # FedQS keeps a previous update per client, and its payload carries three scalars more.
  config.data.validation_fraction = 0.2
  fedqs = run.memory_estimate(config, "fedqs_sgd", data, sched)
  n = data.num_clients
  assert fedqs["per_point"] - est["per_point"] >= n * p + sched.num_slots * 3 * 4


def test_estimate_scales_with_the_grid():
  config, data, sched, _ = setup(**{"sweep.lr": "0.05,0.1,0.2", "num_seeds": 2})
  est = run.memory_estimate(config, "fedavg", data, sched)
  assert est["grid"] == 6 * est["per_point"]
  assert est["total"] == est["grid"] + est["shared_data"]


def test_a_run_that_cannot_fit_is_refused_before_anything_is_written(tmp_path):
  config, _, _, _ = setup(**{"engine.memory_limit_gb": 1e-4, "sweep.lr": "0.05,0.1"})
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError, match=r"GiB over\).*points fit") as info:
    run.run(config, str(workdir))
  assert "memory" in str(info.value)
  assert not workdir.exists()

"""The memory estimate counts what the engine allocates, and a run that cannot fit is refused."""

import jax
import pytest

from fedqs_jax import data as data_lib
from fedqs_jax import memory, models, program, run
from fedqs_jax.errors import ConfigError
from tests.common import tiny_config


def setup(**overrides):
  config = tiny_config(**overrides)
  data = data_lib.load(config.data, config.data.seed)
  sched = program.make_schedule(config)
  module = models.build(config.model, data.num_classes)
  params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), data.x_train[:1])["params"])
  return config, data, sched, memory.tree_bytes(params)


def estimate(config, name, data, sched):
  return program.memory_estimate(
    program.build_program(config, name, data, sched.num_slots), data, sched
  )


def test_estimate_counts_model_copies_slots_and_training_set():
  config, data, sched, p = setup()
  est = estimate(config, "fedavg", data, sched)
  width = max(sched.init_client.shape[-1], sched.dispatch_client.shape[-1])
  # A minibatch's activations per trained client: the 32 x 8x8 inputs, then the outputs of
  # Dense(8), Dense(10) and the model (32 x 10), each with its cotangent.
  activations = 32 * 64 * 4 + 2 * 4 * (32 * 8 + 32 * 10 + 32 * 10)
  assert config.local.batch_size == 32 and config.model.hidden == (8,)
  assert est["per_point"] == 4 * p + sched.num_slots * p + width * (4 * p + activations)
  assert est["shared_data"] == memory.tree_bytes(data)
  # FedQS keeps a previous update per client, and its payload carries three scalars more.
  config.data.validation_fraction = 0.2
  fedqs = estimate(config, "fedqs_sgd", data, sched)
  n = data.num_clients
  assert fedqs["per_point"] - est["per_point"] >= n * p + sched.num_slots * 3 * 4


def test_lanes_hold_the_working_set_and_each_task_its_trained_copy():
  config, data, sched, p = setup(**{"num_seeds": 2})
  lock = estimate(config, "fedavg", data, sched)
  config.engine.client_mode = "lanes"
  prog = program.build_program(config, "fedavg", data, sched.num_slots)
  lanes = program.memory_estimate(prog, data, sched)
  width = max(sched.init_client.shape[-1], sched.dispatch_client.shape[-1])
  per_task = lock["per_point_training"] // width  # 4P + one minibatch's activations
  num_lanes = prog.engine.num_lanes(2 * width)  # both seeds' tasks share the lanes
  assert 1 <= num_lanes < 2 * width
  expected = width * p + -(-num_lanes * per_task // 2)
  assert lanes["per_point_training"] == expected < lock["per_point_training"]
  assert lanes["per_point"] - lanes["per_point_training"] == (
    lock["per_point"] - lock["per_point_training"]
  )


def test_estimate_scales_with_the_grid():
  config, data, sched, _ = setup(**{"sweep.local.lr": "0.05,0.1,0.2", "num_seeds": 2})
  est = estimate(config, "fedavg", data, sched)
  assert est["grid"] == 6 * est["per_point"]
  assert est["total"] == est["grid"] + est["shared_data"]
  assert est["per_device"] == est["total"]  # one device holds the whole grid


def test_sharding_divides_the_grid_between_devices():
  config, data, sched, _ = setup(**{"sweep.local.lr": "0.05,0.1,0.2"})
  prog = program.build_program(config, "fedavg", data, sched.num_slots)
  params = jax.eval_shape(lambda: prog.model.init(jax.random.PRNGKey(0), data.x_train[:1]))
  kwargs = dict(num_slots=sched.num_slots, train_width=4, grid_size=3, hparams=prog.hparams)
  one = memory.estimate(prog.algorithm, params, data, **kwargs)
  two = memory.estimate(prog.algorithm, params, data, num_devices=2, **kwargs)
  assert two["points_per_device"] == 2  # 3 points padded to 4 over 2 devices
  assert two["per_device"] == 2 * one["per_point"] + one["shared_data"] < one["per_device"]
  # A limit between the two: refused on one device, accepted on two.
  limit = (one["per_device"] + two["per_device"]) // 2
  memory.check_fits(two, limit)
  with pytest.raises(ConfigError, match="3 on 1 devices"):
    memory.check_fits(one, limit)


def test_a_run_that_cannot_fit_is_refused_before_anything_is_written(tmp_path):
  config, _, _, _ = setup(**{"engine.memory_limit_gb": 1e-4, "sweep.local.lr": "0.05,0.1"})
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError, match=r"GiB over\).*points fit") as info:
    run.run(config, str(workdir))
  assert "memory" in str(info.value)
  assert not workdir.exists()

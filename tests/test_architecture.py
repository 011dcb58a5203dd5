"""The algorithm contract: one registration point, LocalTask extras, arrivals, padding."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import default
from fedqs_jax import algorithms, engine, program, run
from fedqs_jax import config as config_lib
from fedqs_jax import data as data_lib
from fedqs_jax.algorithms import base
from fedqs_jax.errors import ConfigError
from tests.common import tiny_config
from tests.test_engine import HPARAMS, SETTINGS, handmade_data, make_engine


def probe_spec() -> base.AlgorithmSpec:
  """A new algorithm, written as a user would: FedAvg that mixes in a fraction `keep` of
  the old model, and reports the versions its arrivals trained from."""

  def build(c, ctx):
    del c, ctx

    def aggregate(server_state, params, arrivals, hparams):
      weights = base.data_size_weights(arrivals.num_examples)
      mixed = base.weighted_sum(weights, arrivals.payload)
      keep = hparams["keep"]
      new = jax.tree.map(lambda w, m: keep * w + (1 - keep) * m, params, mixed)
      version_sum = jnp.sum(jnp.where(arrivals.mask, arrivals.version, 0))
      return new, server_state, {"version_sum": version_sum.astype(jnp.float32)}

    return base.Algorithm(
      "probe", base.stateless_init, base.default_begin, base.upload_model, aggregate
    )

  return base.AlgorithmSpec(
    name="probe",
    section="probe",
    build=build,
    hparams={"keep": (0.0, base.Range(0.0, 1.0, high_closed=False))},
  )


@pytest.fixture
def probe(monkeypatch):
  spec = probe_spec()
  monkeypatch.setitem(algorithms._SPECS, spec.name, spec)
  return spec


def test_a_new_algorithm_is_one_spec(probe, tmp_path):
  """Registering the spec is all it takes: config section, validation, sweepable name,
  CSV column; and with keep = 0 it is FedAvg, while its arrivals carry their versions."""
  config = default.get_config()
  assert config.probe.keep == 0.0 and config.sweep.probe.keep == ""
  assert "probe.keep" in algorithms.dynamic_names()

  overrides = {"algorithms": "probe,fedavg", "sweep.probe.keep": "0,0.5"}
  with pytest.raises(ConfigError, match="probe.keep"):
    config_lib.validate(tiny_config(**{**overrides, "probe.keep": 1.0}))
  out = run.run(tiny_config(**overrides), str(tmp_path))
  rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
  assert [r["probe.keep"] for r in rows] == ["0.0", "0.5", ""]  # fedavg has no keep
  fedavg, probe_0 = out["results"]["fedavg"], out["results"]["probe"]
  np.testing.assert_array_equal(probe_0["test_accuracy"][0], fedavg["test_accuracy"][0])
  np.testing.assert_array_equal(probe_0["test_loss"][0], fedavg["test_loss"][0])
  assert not np.array_equal(probe_0["test_loss"][1], fedavg["test_loss"][0])
  versions = np.asarray(out["schedule"].arrival_version[0]).sum(-1)
  np.testing.assert_array_equal(probe_0["version_sum"][0], versions)
  assert versions[-1] > 0  # late rounds aggregate updates from later versions


def test_a_sweep_of_one_algorithms_hyperparameter_changes_that_algorithm_only():
  data = data_lib.load(tiny_config().data, 0)
  config = tiny_config(**{"algorithms": "fedsgd,fedbuff", "sweep.fedbuff.server_lr": "0.5,1.0"})
  config_lib.validate(config)
  sched = program.make_schedule(config)
  fedbuff = run.train(config, "fedbuff", data, sched)
  fedsgd = run.train(config, "fedsgd", data, sched)
  assert [p for p, _, _ in fedbuff["grid"]] == [
    {"fedbuff.server_lr": 0.5},
    {"fedbuff.server_lr": 1.0},
  ]
  assert [p for p, _, _ in fedsgd["grid"]] == [{}]  # fedsgd.server_lr is not swept
  solo = run.train(tiny_config(**{"fedbuff.server_lr": 0.5}), "fedbuff", data, sched)
  np.testing.assert_array_equal(fedbuff["test_loss"][0], solo["test_loss"][0])
  assert not np.array_equal(fedbuff["test_loss"][0], fedbuff["test_loss"][1])


def test_unnamespaced_sweep_names_are_refused_with_the_namespaced_ones():
  config = tiny_config()
  with config.unlocked():
    config.sweep_points = [{"server_lr": 0.5}]
  with pytest.raises(ConfigError, match="fedbuff.server_lr"):
    config_lib.validate(config)


def test_unused_local_task_extras_add_nothing_to_the_program():
  eng, params = make_engine(handmade_data())
  data = handmade_data()

  def jaxpr(task):
    fn = lambda p, t: eng.local_train(p, t, 2, jax.random.PRNGKey(0), HPARAMS, data)  # noqa: E731
    return str(jax.make_jaxpr(fn)(params, task))

  plain = jaxpr(SETTINGS)
  assert plain == jaxpr(SETTINGS._replace(start=None, correction=None, prox=None))
  assert plain != jaxpr(SETTINGS._replace(prox=jnp.float32(0.0)))
  zeros = jax.tree.map(jnp.zeros_like, params)
  assert plain != jaxpr(SETTINGS._replace(correction=zeros))


def test_local_task_start_correction_and_prox_follow_their_formulas():
  """One SGD step (no momentum, no clipping) from `start` with a correction c and a
  proximal pull mu toward `start`: w1 = start - lr (g(start) + c), as the prox gradient
  vanishes at the start; a second step adds mu (w1 - start)."""
  data = handmade_data()
  eng, params = make_engine(data, batch_size=32, epochs=2)  # client 2: two full-batch steps
  hp = {**HPARAMS, "clip": jnp.float32(1e9)}
  rng = np.random.default_rng(1)
  start = jax.tree.map(lambda x: x + jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
  c = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
  mu, lr = 0.7, 0.1
  task = base.LocalTask(jnp.float32(lr), jnp.float32(0.0), start=start, correction=c,
                        prox=jnp.float32(mu))  # fmt: skip
  trained, stats = jax.jit(
    lambda t: eng.local_train(params, t, 2, jax.random.PRNGKey(0), hp, data)
  )(task)
  assert int(stats.steps) == 2
  x = data.x_train[data.client_index[2][:17]]
  y = data.y_train[data.client_index[2][:17]]

  def grad(w):  # the full client batch: both steps see all 17 examples
    def loss(p):
      return engine.cross_entropy(eng.apply_fn(p, x), y, jnp.ones(17))

    return jax.grad(loss)(w)

  w1 = jax.tree.map(lambda w, g, ci: w - lr * (g + ci), start, grad(start), c)
  w2 = jax.tree.map(lambda w, g, ci, w0: w - lr * (g + mu * (w - w0) + ci), w1, grad(w1), c, start)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), trained, w2)


def test_padded_dispatch_entries_are_inert_on_the_tick_protocol():
  """`tick` dispatches a variable number of clients into a static capacity: the padding
  entries must neither train into a slot nor touch a client's state. FedQS (which keeps
  per-client state) gives the same numbers when the padding points at real clients and
  slots."""
  config = tiny_config(
    **{
      "algorithms": "fedqs_sgd",
      "schedule.protocol": "tick",
      "data.validation_fraction": 0.2,
      "schedule.num_rounds": 20,
    }
  )
  config_lib.validate(config)
  data = data_lib.load(config.data, config.data.seed)
  sched = program.make_schedule(config)
  mask = np.asarray(sched.dispatch_mask)
  assert (~mask).sum() > 0 and mask.sum() > 0  # the schedule has padding and real entries
  rng = np.random.default_rng(0)
  noisy = sched.replace(
    dispatch_client=jnp.where(
      mask, sched.dispatch_client, rng.integers(0, data.num_clients, mask.shape)
    ),
    dispatch_slot=jnp.where(
      mask, sched.dispatch_slot, rng.integers(0, sched.num_slots, mask.shape)
    ),
  )
  a = run.train(config, "fedqs_sgd", data, sched)
  b = run.train(config, "fedqs_sgd", data, noisy)
  np.testing.assert_array_equal(a["test_loss"], b["test_loss"])
  np.testing.assert_array_equal(a["client_steps"], b["client_steps"])
  assert int(a["dispatch_classified"].sum()) > 0  # FedQS's client state was in use

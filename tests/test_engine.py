"""Training-phase invariants: exact local epochs, vmap == loop, equivalences, one trace."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedqs_jax import algorithms, engine, models, program, run
from fedqs_jax.algorithms import LocalTask
from fedqs_jax.data import FederatedData, index_table
from tests.common import tiny_config


def handmade_data(sizes=(5, 0, 17, 1, 9)):
  rng = np.random.default_rng(0)
  n = sum(sizes)
  bounds = np.cumsum((0, *sizes))
  table, counts = index_table(
    [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
  )
  return FederatedData(
    x_train=jnp.asarray(rng.normal(size=(n, 6)), jnp.float32),
    y_train=jnp.asarray(rng.integers(0, 3, size=n), jnp.int32),
    client_index=jnp.asarray(table),
    client_count=jnp.asarray(counts),
    val_index=jnp.zeros((len(sizes), 1), jnp.int32),
    val_count=jnp.zeros(len(sizes), jnp.int32),
    x_test=jnp.asarray(rng.normal(size=(10, 6)), jnp.float32),
    y_test=jnp.asarray(rng.integers(0, 3, size=10), jnp.int32),
    num_classes=3,
  )


def make_engine(
  data, client_mode="vmap", batch_size=4, epochs=2, algorithm="fedavg", local_loop="while"
):
  config = tiny_config()
  module = models.MLP(num_classes=data.num_classes, hidden=(8,))
  algo, _ = algorithms.build(algorithm, config)
  eng = engine.Engine(
    algo,
    lambda p, x: module.apply({"params": p}, x),
    data,
    num_slots=data.num_clients,
    local=engine.LocalConfig(batch_size=batch_size, epochs=epochs),
    execution=engine.ExecConfig(client_mode=client_mode, local_loop=local_loop),
  )
  params = module.init(jax.random.PRNGKey(0), data.x_train[:1])["params"]
  return eng, params


HPARAMS = {"lr": jnp.float32(0.1), "momentum": jnp.float32(0.5), "clip": jnp.float32(20.0)}
SETTINGS = LocalTask(lr=jnp.float32(0.1), momentum=jnp.float32(0.5))


@pytest.mark.parametrize("count", [0, 1, 4, 5, 17])
def test_local_epochs_visit_each_example_once_per_epoch(count):
  data = handmade_data()
  eng, _ = make_engine(data, batch_size=4, epochs=3)
  positions, mask = jax.jit(eng.batch_plan)(jax.random.PRNGKey(1), count)
  positions, mask = np.asarray(positions), np.asarray(mask)
  assert positions.shape == (3 * 5, 4)  # E * ceil(max_n / B) = 3 * ceil(17 / 4)
  spe = max(-(-count // 4), 1)  # the client's own steps per epoch: its steps are a prefix
  for e in range(3):
    seen = positions[e * spe : (e + 1) * spe][mask[e * spe : (e + 1) * spe]]
    assert sorted(seen.tolist()) == list(range(count))
  active = mask.any(1)
  assert active.sum() == 3 * -(-count // 4)
  assert not active[active.sum() :].any()
  if count > 4:  # epochs use fresh permutations
    first = positions[:spe][mask[:spe]]
    second = positions[spe : 2 * spe][mask[spe : 2 * spe]]
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("local_loop", engine.LOCAL_LOOPS)
def test_empty_client_trains_zero_steps_and_keeps_the_model(local_loop):
  data = handmade_data()
  eng, params = make_engine(data, local_loop=local_loop)
  dd = data
  trained, stats = jax.jit(eng.local_train)(params, SETTINGS, 1, jax.random.PRNGKey(0), HPARAMS, dd)
  assert int(stats.steps) == 0
  jax.tree.map(np.testing.assert_array_equal, trained, params)
  trained, stats = jax.jit(eng.local_train)(params, SETTINGS, 2, jax.random.PRNGKey(0), HPARAMS, dd)
  assert int(stats.steps) == 2 * 5  # 17 examples, batch 4: 5 steps per epoch
  assert not np.allclose(trained["Dense_0"]["kernel"], params["Dense_0"]["kernel"])


@pytest.mark.parametrize("local_loop", engine.LOCAL_LOOPS)
def test_vmapped_local_training_equals_a_python_loop(local_loop):
  data = handmade_data()
  eng, params = make_engine(data, local_loop=local_loop)
  dd = data
  clients = jnp.arange(5)
  keys = jax.random.split(jax.random.PRNGKey(2), 5)
  batched = jax.jit(jax.vmap(lambda c, k: eng.local_train(params, SETTINGS, c, k, HPARAMS, dd)))(
    clients, keys
  )
  one = jax.jit(lambda c, k: eng.local_train(params, SETTINGS, c, k, HPARAMS, dd))
  for i in range(5):
    trained, stats = one(clients[i], keys[i])
    jax.tree.map(
      lambda b, t, i=i: np.testing.assert_allclose(b[i], t, rtol=1e-5, atol=1e-6),
      batched[0],
      trained,
    )
    assert int(batched[1].steps[i]) == int(stats.steps)


@pytest.mark.parametrize("local_loop", engine.LOCAL_LOOPS)
def test_client_modes_give_the_same_payloads(local_loop):
  data = handmade_data()
  eng, params = make_engine(data, algorithm="fedsgd", local_loop=local_loop)
  hp = {**HPARAMS, "server_lr": jnp.float32(1.0)}
  state = jax.tree.map(
    lambda x: x[0],
    eng.init(
      jax.random.PRNGKey(0)[None],
      jax.tree.map(lambda x: x[None], params),
      jnp.arange(5)[None],
      jnp.arange(5)[None],
      jnp.zeros((1, 5), bool),  # nothing trained yet
      {k: v[None] for k, v in hp.items()},
      data,
    ),
  )
  clients = jnp.array([2, 0, 4, 1, 3])
  mask = jnp.array([True, True, False, True, True])  # slot 4 must stay untouched
  outs = {}
  for mode in engine.CLIENT_MODES:
    dispatch = jax.jit(
      lambda st, mode=mode: eng._dispatch(st, clients, clients, mask, 1, hp, data, mode)
    )
    outs[mode] = dispatch(state)
  for mode in engine.CLIENT_MODES[1:]:
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), outs["vmap"], outs[mode]
    )
  payloads, metrics = outs["vmap"]
  jax.tree.map(lambda x: np.testing.assert_array_equal(x[4], 0.0), payloads.payloads)
  assert int(metrics["client_steps"]) == 2 * (5 + 2 + 1)  # clients 2, 0, 3 (1 is empty)


def _train(config, name="fedavg"):
  from fedqs_jax import data as data_lib

  data = data_lib.load(config.data, config.data.seed)
  sched = program.make_schedule(config)
  return run.train(config, name, data, sched)


def test_semi_async_with_equal_latencies_and_full_buffer_is_synchronous_fedavg():
  n = 12
  common = {"time.latencies": (4,) * n, "schedule.num_rounds": 10}
  semi = _train(tiny_config(**common, **{"schedule.protocol": "semi_async",
                                         "schedule.buffer_size": n}))  # fmt: skip
  sync = _train(tiny_config(**common, **{"schedule.protocol": "sync"}))
  np.testing.assert_array_equal(semi["test_accuracy"], sync["test_accuracy"])
  np.testing.assert_array_equal(semi["test_loss"], sync["test_loss"])


def test_fedsgd_equals_fedavg_without_staleness():
  config = tiny_config(**{"schedule.protocol": "sync", "schedule.num_rounds": 10})
  avg = _train(config, "fedavg")
  sgd = _train(config, "fedsgd")
  np.testing.assert_allclose(avg["test_loss"], sgd["test_loss"], rtol=1e-4)


def test_chunks_trace_once_and_same_seed_gives_same_numbers():
  config = tiny_config(**{"engine.round_mode": "scan"})
  first = _train(config)
  assert first["chunk_traces"] == 1  # 4 chunks, one trace
  second = _train(config)
  for key in ("test_accuracy", "test_loss", "train_loss", "client_steps"):
    np.testing.assert_array_equal(first[key], second[key])


def test_round_modes_agree_and_seed_batch_equals_solo_runs():
  batch = _train(tiny_config(**{"num_seeds": 2}))
  solo = _train(tiny_config(**{"seed": 1, "engine.round_mode": "unroll"}))
  np.testing.assert_allclose(batch["test_loss"][1], solo["test_loss"][0], rtol=1e-5)
  np.testing.assert_array_equal(batch["client_steps"][1], solo["client_steps"][0])
  assert not np.array_equal(batch["test_loss"][0], batch["test_loss"][1])


def test_chunk_loop_makes_no_host_to_device_transfers():
  from fedqs_jax import data as data_lib

  config = tiny_config()
  data = data_lib.load(config.data, config.data.seed)
  sched = program.make_schedule(config)
  prog = program.build_program(config, "fedavg", data, sched.num_slots)
  eng = prog.engine
  hparams = prog.grid_hparams([{}])
  params = jax.vmap(lambda k: prog.model.init(k, data.x_train[:1]))(
    program.seed_keys([0], program.INIT_STREAM)
  )
  state = eng.init(
    program.seed_keys([0], program.TRAIN_STREAM), params, sched.init_client, sched.init_slot,
    sched.init_mask, hparams, data,
  )  # fmt: skip
  events = sched.events()
  state, _, _ = eng.run_chunk(state, events, hparams, data)  # compiles
  with jax.transfer_guard_host_to_device("disallow"):
    for _ in range(3):
      state, _, evaluation = eng.run_chunk(state, events, hparams, data)
  assert int(state.round[0]) == 20
  assert eng.traces == 1


def test_gradient_clipping_bounds_every_step():
  data = handmade_data()
  eng, params = make_engine(data, batch_size=32, epochs=1)  # client 2: one step
  dd = data
  settings = LocalTask(lr=jnp.float32(0.5), momentum=jnp.float32(0.0))
  hp = {**HPARAMS, "clip": jnp.float32(1e-3)}
  trained, stats = jax.jit(eng.local_train)(params, settings, 2, jax.random.PRNGKey(0), hp, dd)
  assert int(stats.steps) == 1
  moved = jax.tree.map(lambda a, b: jnp.sum((a - b) ** 2), trained, params)
  norm = float(jnp.sqrt(sum(jax.tree.leaves(moved))))
  np.testing.assert_allclose(norm, 0.5 * 1e-3, rtol=1e-3)  # lr * clip: the raw norm is larger


def test_while_and_scan_local_loops_train_identically():
  data = handmade_data()
  dd = data
  out = {}
  for loop in engine.LOCAL_LOOPS:
    eng, params = make_engine(data, local_loop=loop)
    out[loop] = jax.jit(
      jax.vmap(lambda c, eng=eng, params=params: eng.local_train(
        params, SETTINGS, c, jax.random.PRNGKey(c), HPARAMS, dd))
    )(jnp.arange(5))  # fmt: skip
  np.testing.assert_array_equal(out["while"][1].steps, [2 * 2, 0, 2 * 5, 2 * 1, 2 * 3])
  np.testing.assert_array_equal(out["while"][1].steps, out["scan"][1].steps)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), out["while"], out["scan"]
  )


class BatchNormNet(nn.Module):
  """Dense -> BatchNorm -> ReLU -> Dense: the smallest model with running statistics."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(8)(x.reshape((x.shape[0], -1)))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
    return nn.Dense(3)(nn.relu(x))


def stateful_engine(module, data, stateful=(), dropout=False, **local):
  fns = program.model_fns(module, stateful, dropout)
  algo, _ = algorithms.build("fedavg", tiny_config())
  eng = engine.Engine(
    algo, fns.apply, data, num_slots=data.num_clients, train_fn=fns.train,
    local=engine.LocalConfig(**local),
  )  # fmt: skip
  return eng, fns, fns.init(jax.random.PRNGKey(0), data.x_train[:1])


def test_batchnorm_statistics_are_trained_and_carried_like_parameters():
  """One local step of a BatchNorm net: the weights take one SGD step and the running
  statistics move as the step's minibatch says (no gradient reaches them)."""
  data = handmade_data(sizes=(4, 4))
  eng, fns, variables = stateful_engine(
    BatchNormNet(), data, stateful=("batch_stats",), batch_size=4, steps=1
  )
  assert set(variables) == {"params", "batch_stats"}
  settings = LocalTask(lr=jnp.float32(0.1), momentum=jnp.float32(0.0))
  key = jax.random.PRNGKey(3)
  hparams = {**HPARAMS, "clip": jnp.float32(1e9)}  # an exact SGD step: no clipping
  trained, stats = jax.jit(lambda: eng.local_train(variables, settings, 1, key, hparams, data))()
  assert int(stats.steps) == 1
  pos, mask = eng.batch_plan(key, data.client_count[1])
  x = data.x_train[data.client_index[1][pos[0]]]
  y = data.y_train[data.client_index[1][pos[0]]]
  assert bool(mask[0].all())

  def loss(p):
    logits, state = fns.train({**variables, "params": p}, x, None)
    return engine.cross_entropy(logits, y, mask[0]), state

  (_, state), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
  expected = jax.tree.map(lambda w, g: w - 0.1 * g, variables["params"], grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               trained["params"], expected)  # fmt: skip
  # Running averages: 0.5 * initial + 0.5 * the minibatch's statistics.
  hidden = x.reshape(4, -1) @ variables["params"]["Dense_0"]["kernel"]
  hidden = hidden + variables["params"]["Dense_0"]["bias"]
  running = trained["batch_stats"]["BatchNorm_0"]
  np.testing.assert_allclose(running["mean"], 0.5 * hidden.mean(0), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(running["var"], 0.5 + 0.5 * hidden.var(0), rtol=1e-4, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               trained["batch_stats"], state["batch_stats"])  # fmt: skip
  # Evaluation normalises with the carried running statistics.
  np.testing.assert_allclose(
    fns.apply(trained, x),
    BatchNormNet().apply(trained, x),
    rtol=1e-6,
  )


def test_dropout_draws_from_the_task_key_only_in_training():
  data = handmade_data(sizes=(16, 16))
  data = data.replace(x_train=data.x_train[:, :6])
  eng, fns, params = stateful_engine(
    models.FCN(num_classes=3, hidden=32, dropout=0.5), data, dropout=True, batch_size=4, epochs=1
  )
  eng0, _, _ = stateful_engine(
    models.FCN(num_classes=3, hidden=32, dropout=0.0), data, batch_size=4, epochs=1
  )
  train = jax.jit(
    lambda e, k: e.local_train(params, SETTINGS, 0, k, HPARAMS, data), static_argnums=0
  )
  a, _ = train(eng, jax.random.PRNGKey(0))
  again, _ = train(eng, jax.random.PRNGKey(0))
  other, _ = train(eng, jax.random.PRNGKey(1))
  plain, _ = train(eng0, jax.random.PRNGKey(0))
  leaves = lambda t: np.concatenate([np.ravel(v) for v in jax.tree.leaves(t)])  # noqa: E731
  np.testing.assert_array_equal(leaves(a), leaves(again))  # same key, same numbers
  assert not np.allclose(leaves(a), leaves(plain))  # dropout is active in training
  assert not np.allclose(leaves(a), leaves(other))
  # Evaluation applies no dropout: the trained net evaluates like its dropout-free twin.
  x = data.x_test[:, :6]
  np.testing.assert_array_equal(fns.apply(a, x), eng0.apply_fn(a, x))
  np.testing.assert_allclose(fns.apply(params, x), eng0.apply_fn(params, x), rtol=1e-6)


@pytest.mark.parametrize("model", ["fcn", "lstm"])
def test_paper_models_train_alike_in_every_client_mode(model):
  """Dropout (FCN) and a recurrent net (LSTM) dispatched in lockstep, mapped or
  unrolled: the same payloads (each task draws from its own key in every mode)."""
  data = handmade_data()
  if model == "lstm":
    rng = np.random.default_rng(0)
    tokens = lambda n: jnp.asarray(rng.integers(0, 80, size=(n, 5)), jnp.int32)  # noqa: E731
    data = data.replace(x_train=tokens(data.x_train.shape[0]), x_test=tokens(10), num_classes=80)
    module = models.CharLSTM(num_classes=80, hidden=8, layers=2)
  else:
    module = models.FCN(num_classes=3, hidden=16, dropout=0.5)
  fns = program.model_fns(module, dropout=model == "fcn")
  params = fns.init(jax.random.PRNGKey(0), data.x_train[:1])
  algo, _ = algorithms.build("fedsgd", tiny_config())
  hp = {**HPARAMS, "server_lr": jnp.float32(1.0)}
  outs = {}
  for mode in engine.CLIENT_MODES:
    eng = engine.Engine(
      algo, fns.apply, data, num_slots=5, train_fn=fns.train,
      local=engine.LocalConfig(batch_size=4, epochs=1),
      execution=engine.ExecConfig(client_mode=mode),
    )  # fmt: skip
    state = jax.tree.map(
      lambda x: x[0],
      eng.init(
        jax.random.PRNGKey(0)[None], jax.tree.map(lambda x: x[None], params),
        jnp.arange(5)[None], jnp.arange(5)[None], jnp.ones((1, 5), bool),
        {k: v[None] for k, v in hp.items()}, data,
      ),
    )  # fmt: skip
    outs[mode] = state.payloads
  for mode in engine.CLIENT_MODES[1:]:
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), outs["vmap"], outs[mode]
    )
  moved = [float(jnp.abs(x).max()) for x in jax.tree.leaves(outs["vmap"])]
  assert max(moved) > 0  # the clients really trained

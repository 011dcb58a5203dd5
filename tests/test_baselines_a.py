"""FedProx, FedAsync's proximal term, CA2FL, FADAS and FedAC: reductions, closed forms,
numpy transcriptions of each formula, and a shrunk CLI run of the four."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedqs_jax import data as data_lib
from fedqs_jax import program, run
from fedqs_jax.algorithms import Arrivals, Broadcast, LocalTask, fadas, fedac
from tests.common import finish, start_cli, tiny_args, tiny_config
from tests.test_algorithms import build, flat, params_like, rows
from tests.test_engine import handmade_data, make_engine

CLI_ALGORITHMS = "fedprox,ca2fl,fadas,fedac"


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
  """The shrunk CLI run of the four algorithms, started first and awaited by its test."""
  workdir = tmp_path_factory.mktemp("cli") / "run"
  proc = start_cli(f"--workdir={workdir}", *tiny_args(**{"algorithms": CLI_ALGORITHMS}))
  yield proc, workdir
  if proc.poll() is None:
    proc.kill()


def arrivals_of(payload, client, staleness, mask=None):
  k = len(client)
  staleness = jnp.asarray(staleness, jnp.int32)
  return Arrivals(
    payload=payload,
    client=jnp.asarray(client, jnp.int32),
    staleness=staleness,
    num_examples=jnp.full(k, 10.0, jnp.float32),
    version=20 - staleness,
    mask=jnp.ones(k, bool) if mask is None else jnp.asarray(mask, bool),
  )


def broadcast(params, client=0, count=5.0, steps=1):
  return Broadcast(
    params, params, jnp.int32(client), jnp.int32(0), jnp.float32(count), lambda p: (None, None),
    jnp.int32(steps),
  )  # fmt: skip


# -- FedProx and FedAsync's proximal term -----------------------------------------------


def train(config, name):
  data = data_lib.load(config.data, config.data.seed)
  return run.train(config, name, data, program.make_schedule(config))


@pytest.mark.parametrize(
  "plain,name,overrides",
  [
    ("fedavg", "fedprox", {"fedprox.mu": 0.0}),
    ("fedasync", "fedasync", {"fedasync.proximal": True, "fedasync.rho": 0.0}),
  ],
)
def test_a_zero_proximal_term_trains_bit_for_bit_like_no_term(plain, name, overrides):
  """mu = 0 still computes the term, but 0 * (w - w_start) is an exact zero."""
  common = {"schedule.num_rounds": 10}
  a = train(tiny_config(**common), plain)
  b = train(tiny_config(**common, **overrides), name)
  for key in ("test_accuracy", "test_loss", "train_loss", "client_steps"):
    assert a[key].tobytes() == b[key].tobytes(), key


@pytest.mark.parametrize("name,field", [("fedprox", "fedprox.mu"), ("fedasync", "fedasync.rho")])
def test_the_proximal_term_pulls_local_training_toward_its_start(name, field):
  data = handmade_data()
  eng, params = make_engine(data, batch_size=4, epochs=3)
  hp = {"lr": jnp.float32(0.1), "momentum": jnp.float32(0.0), "clip": jnp.float32(1e9)}
  extra = {"fedasync.proximal": True} if name == "fedasync" else {}

  def distance(mu):
    algo, own = build(name, **extra, **{field: mu})
    task, _, _ = algo.client_begin((), (), broadcast(params), {**hp, **own})
    assert float(task.prox) == pytest.approx(mu)
    trained, _ = jax.jit(eng.local_train)(params, task, 2, jax.random.PRNGKey(0), hp, data)
    return float(np.linalg.norm(flat(trained) - flat(params)))

  plain, _ = jax.jit(eng.local_train)(
    params, LocalTask(hp["lr"], hp["momentum"]), 2, jax.random.PRNGKey(0), hp, data
  )
  moves = [distance(mu) for mu in (0.0, 1.0, 5.0)]
  assert moves[0] == pytest.approx(np.linalg.norm(flat(plain) - flat(params)), rel=1e-6)
  assert moves[0] > moves[1] > moves[2] > 0


def test_fedasync_default_trains_without_a_proximal_term():
  algo, hp = build("fedasync")
  task, _, _ = algo.client_begin((), (), broadcast(params_like(0)), hp)
  assert task.prox is None and task.correction is None and task.start is None


# -- CA2FL ---------------------------------------------------------------------------


def ca2fl_round(algo, hp, state, params, arr):
  return jax.jit(algo.aggregate)(state, params, arr, hp)


def test_ca2fl_with_empty_caches_is_the_plain_buffered_mean():
  algo, hp = build("ca2fl")
  params = params_like(0)
  state, _ = algo.init(params, 8, hp)
  arr = arrivals_of(params_like(1, (4,)), [5, 1, 7, 2], [0, 3, 1, 9])
  new, state, _ = ca2fl_round(algo, hp, state, params, arr)
  expected = flat(params) + rows(arr.payload).mean(0)
  np.testing.assert_allclose(flat(new), expected, rtol=1e-5, atol=1e-6)
  cache = rows(state.cache)
  np.testing.assert_array_equal(cache[[5, 1, 7, 2]], rows(arr.payload))
  assert not cache[[0, 3, 4, 6]].any()


def test_ca2fl_two_rounds_follow_the_formula():
  """v = h_bar + (1/|S|) sum_S (Delta_i - h_i); w += lr v; h_S = Delta_S; h_bar = mean h."""
  n, lr = 6, 0.5
  algo, hp = build("ca2fl", **{"ca2fl.server_lr": lr})
  params = params_like(0)
  state, _ = algo.init(params, n, hp)
  w, h = flat(params), np.zeros((n, flat(params).size))
  rounds = [([0, 1, 2, 3], params_like(1, (4,))), ([2, 4, 0], params_like(2, (3,)))]
  for clients, payload in rounds:
    params, state, _ = ca2fl_round(algo, hp, state, params, arrivals_of(payload, clients, [1] * 4))
    delta = rows(payload)
    v = h.mean(0) + (delta - h[clients]).mean(0)
    w = w + lr * v
    h[clients] = delta
    np.testing.assert_allclose(flat(params), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat(state.cache_sum) / n, h.mean(0), rtol=1e-5, atol=1e-6)


def test_ca2fl_duplicate_arrivals_calibrate_in_order_and_the_later_one_is_cached():
  n = 5
  algo, hp = build("ca2fl")
  params = params_like(0)
  state, _ = algo.init(params, n, hp)
  first = params_like(1, (2,))
  _, state, _ = ca2fl_round(algo, hp, state, params, arrivals_of(first, [1, 3], [0, 0]))
  payload = params_like(2, (4,))
  clients = [3, 0, 3, 3]  # client 3 three times
  new, state, _ = ca2fl_round(algo, hp, state, params, arrivals_of(payload, clients, [0] * 4))
  h = np.zeros((n, flat(params).size))
  h[[1, 3]] = rows(first)
  h_bar, correction = h.mean(0), 0.0
  for c, d in zip(clients, rows(payload), strict=True):  # FIFO
    correction = correction + d - h[c]
    h[c] = d
  np.testing.assert_allclose(flat(new), flat(params) + h_bar + correction / 4, rtol=1e-5, atol=1e-6)
  cache = rows(state.cache)
  np.testing.assert_array_equal(cache[3], rows(payload)[3])  # the last one
  np.testing.assert_allclose(cache, h, rtol=0, atol=0)
  np.testing.assert_allclose(flat(state.cache_sum), h.sum(0), rtol=1e-5, atol=1e-5)


def test_ca2fl_running_mean_equals_the_mean_of_all_rows_and_masked_arrivals_are_inert():
  n, k = 7, 5
  algo, hp = build("ca2fl")
  params = params_like(0)
  state, _ = algo.init(params, n, hp)
  rng = np.random.default_rng(0)
  for r in range(12):
    mask = rng.random(k) > 0.2
    arr = arrivals_of(params_like(10 + r, (k,)), rng.integers(0, n, k), [0] * k, mask)
    params, state, _ = ca2fl_round(algo, hp, state, params, arr)
  cache = rows(state.cache)
  np.testing.assert_allclose(flat(state.cache_sum) / n, cache.mean(0), rtol=1e-5, atol=1e-5)
  # One more round: a masked arrival changes neither the model nor the cache.
  arr = arrivals_of(params_like(99, (k,)), [0, 1, 2, 3, 4], [0] * k, [1, 1, 0, 1, 1])
  a = ca2fl_round(algo, hp, state, params, arr)
  keep = np.array([0, 1, 3, 4])
  b = ca2fl_round(algo, hp, state, params, jax.tree.map(lambda x: x[keep], arr))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a[:2], b[:2])


def test_ca2fl_rounds_write_the_cache_in_place():
  """No O(N P) work per round: XLA's temporaries of a donated scan of rounds stay far below
  the [N, P] cache (a per-round copy of the cache would be one of them)."""
  n, k, rounds = 20_000, 5, 3
  algo, hp = build("ca2fl")
  params = params_like(0)
  state, _ = algo.init(params, n, hp)
  one_round = arrivals_of(params_like(1, (k,)), list(range(k)), [0] * k)
  xs = jax.tree.map(lambda x: jnp.stack([x] * rounds), one_round)

  def scan(state, params, xs):
    def one(carry, arr):
      new, state, _ = algo.aggregate(carry[0], carry[1], arr, hp)
      return (state, new), None

    return jax.lax.scan(one, (state, params), xs)[0]

  compiled = jax.jit(scan, donate_argnums=(0, 1)).lower(state, params, xs).compile()
  cache_bytes = sum(x.nbytes for x in jax.tree.leaves(state.cache))
  assert compiled.memory_analysis().temp_size_in_bytes < cache_bytes / 100


# -- FADAS ---------------------------------------------------------------------------


def run_fadas(hp_overrides, staleness, k=3):
  algo, hp = build("fadas", **hp_overrides)
  params = params_like(0)
  state, _ = algo.init(params, 10, hp)
  out, deltas = [flat(params)], []
  for r, tau in enumerate(staleness):
    payload = params_like(20 + r, (k,))
    deltas.append(rows(payload).mean(0))
    params, state, metrics = jax.jit(algo.aggregate)(
      state, params, arrivals_of(payload, list(range(k)), tau), hp
    )
    out.append(flat(params))
  return out, deltas


def test_fadas_three_rounds_follow_the_official_fedams_update():
  b1, b2, eps, lr, tau_c = 0.9, 0.99, 1e-8, 0.5, 1.0
  staleness = [[0, 1, 0], [3, 0, 2], [1, 2, 0]]  # tau_max 1, 3, 2: lambda 1, 1/3, 1/2
  ws, deltas = run_fadas({"fadas.server_lr": lr, "fadas.tau_c": tau_c}, staleness)
  w, m, v, v_hat = ws[0], 0.0, 0.0, 0.0
  for t, (tau, delta) in enumerate(zip(staleness, deltas, strict=True), start=1):
    lam = 1.0 / max(tau) if max(tau) > tau_c else 1.0
    m = b1 * m + (1 - b1) * delta
    v = b2 * v + (1 - b2) * delta**2
    v_hat = np.maximum(v_hat, v)
    w = w + lr * lam / (1 - b1**t) * m / (np.sqrt(v_hat) / np.sqrt(1 - b2**t) + eps)
    np.testing.assert_allclose(ws[t], w, rtol=1e-4, atol=1e-5)


def test_fadas_without_momentum_or_delay_is_an_rms_normalised_step():
  """b1 = 0, lambda = 1: w += lr Delta / (sqrt(v_hat / (1 - b2^t)) + eps); round 1 is a
  sign step lr Delta / (|Delta| + eps)."""
  b2, eps, lr = 0.9, 1e-8, 0.25
  staleness = [[5, 0, 9], [0, 7, 1], [2, 2, 2]]
  ws, deltas = run_fadas(
    {"fadas.b1": 0.0, "fadas.b2": b2, "fadas.server_lr": lr, "fadas.tau_c": 100.0}, staleness
  )
  np.testing.assert_allclose(ws[1] - ws[0], lr * np.sign(deltas[0]), rtol=1e-5)
  v, v_hat = 0.0, 0.0
  for t, delta in enumerate(deltas, start=1):
    v = b2 * v + (1 - b2) * delta**2
    v_hat = np.maximum(v_hat, v)
    step = lr * delta / (np.sqrt(v_hat / (1 - b2**t)) + eps)
    np.testing.assert_allclose(ws[t] - ws[t - 1], step, rtol=1e-4, atol=1e-6)


def test_fadas_delay_factor():
  tau = jnp.array([0, 4, 2, 9])
  mask = jnp.array([True, True, True, False])
  assert float(fadas.delay_factor(tau, mask, 1.0)) == pytest.approx(1 / 4)
  assert float(fadas.delay_factor(tau, mask, 4.0)) == 1.0  # tau_max = tau_c: not above
  assert float(fadas.delay_factor(jnp.array([0, 1]), jnp.ones(2, bool), 1.0)) == 1.0


# -- FedAC ---------------------------------------------------------------------------


def adam_first_step(d, lr, eps):
  """Adam's first step from a zero state: bias-corrected m = d, v = d^2."""
  return lr * d / (np.abs(d) + eps)


def fedac_payload(updates, bases):
  k = len(updates)
  zeros = jax.tree.map(lambda x: jnp.zeros((k, *x.shape)), updates[0])
  stack = lambda xs: jax.tree.map(lambda *x: jnp.stack(x), *xs)  # noqa: E731
  return {"upload": stack(updates), "base": stack(bases), "control_delta": zeros}


def test_fedac_fresh_arrivals_are_weighted_equally():
  k = 4
  algo, hp = build("fedac")
  params = params_like(0)
  state, _ = algo.init(params, 10, hp)
  updates = [params_like(30 + i) for i in range(k)]
  bases = [params_like(40 + i) for i in range(k)]  # far from params: a large drift, ignored
  arr = arrivals_of(fedac_payload(updates, bases), [0, 1, 2, 3], [0, 1, 1, 0])
  new, _, metrics = jax.jit(algo.aggregate)(state, params, arr, hp)
  d = np.mean([flat(u) for u in updates], axis=0)
  np.testing.assert_allclose(flat(new) - flat(params), adam_first_step(d, 0.01, 1e-3), rtol=1e-4)
  assert float(metrics["stale_weight"]) == 0.0
  cos = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, k), jnp.float32)
  p = fedac.arrival_weights(jnp.array([0, 1, 0, 1]), cos, jnp.ones(k, bool), jnp.ones(k, bool))
  np.testing.assert_allclose(p, np.full(k, 1 / k), rtol=1e-6)


def test_fedac_stale_arrivals_are_weighted_by_the_cosine_with_the_global_drift():
  lr, eps = 0.05, 1e-3
  algo, hp = build("fedac", **{"fedac.server_lr": lr, "fedac.eps": eps})
  params = params_like(0)
  state, _ = algo.init(params, 10, hp)
  rng = np.random.default_rng(3)
  drift_dir = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
  updates = [
    params_like(50),  # fresh: 1/K
    jax.tree.map(lambda a, b: a + 0.5 * b, drift_dir, params_like(51)),  # stale, aligned
    jax.tree.map(lambda a: -a, drift_dir),  # stale, against the drift: weight 0
    params_like(52),  # stale, with a zero drift (base = params): treated as fresh
    params_like(53),  # stale, nearly orthogonal
  ]
  bases = [
    params_like(60),
    jax.tree.map(lambda w, d: w - 0.3 * d, params, drift_dir),
    jax.tree.map(lambda w, d: w - 2.0 * d, params, drift_dir),
    params,
    params_like(61),
  ]
  staleness = [1, 2, 7, 4, 3]
  arr = arrivals_of(fedac_payload(updates, bases), list(range(5)), staleness)
  new, _, metrics = jax.jit(algo.aggregate)(state, params, arr, hp)
  u = np.stack([flat(x) for x in updates])
  drift = flat(params)[None] - np.stack([flat(b) for b in bases])
  s = np.full(5, 1 / 5)
  for i in (1, 2, 4):
    cos = drift[i] @ u[i] / (np.linalg.norm(drift[i]) * np.linalg.norm(u[i]))
    s[i] = max(cos, 0.0)
  assert s[1] > 0.5 and s[2] == 0.0
  p = s / s.sum()
  np.testing.assert_allclose(float(metrics["stale_weight"]), p[[1, 2, 3, 4]].sum(), rtol=1e-5)
  np.testing.assert_allclose(flat(new) - flat(params), adam_first_step(p @ u, lr, eps), rtol=1e-4)


def test_fedac_control_variates_follow_scaffold_option_two():
  n, count, lr = 6, 37.0, 0.1
  algo, hp = build("fedac")
  hp = {**hp, "lr": jnp.float32(lr)}
  params = params_like(0)
  server, clients = algo.init(params, n, hp)
  c, ci = params_like(70), params_like(71)
  server = server._replace(control=c)
  row = jax.tree.map(lambda x: x[4], clients)._replace(control=ci)
  steps = 3 * int(np.ceil(count / 8))  # the engine's epochs * ceil(n / B), e.g. E = 3, B = 8
  b = broadcast(params, client=4, count=count, steps=steps)
  task, row, _ = algo.client_begin(row, server, b, hp)
  np.testing.assert_allclose(flat(task.correction), flat(c) - flat(ci), rtol=1e-6)
  trained = params_like(72)
  payload, row = algo.client_end(row, b, trained, hp)
  expected = flat(ci) - flat(c) + (flat(params) - flat(trained)) / (steps * lr)
  np.testing.assert_allclose(flat(row.control), expected, rtol=1e-5, atol=1e-5)
  dc = flat(payload["control_delta"])
  np.testing.assert_allclose(dc, expected - flat(ci), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(flat(payload["upload"]), flat(trained) - flat(params), rtol=1e-6)
  np.testing.assert_array_equal(flat(payload["base"]), flat(params))
  # The server: c += (1/N) sum over the real arrivals of (c_i+ - c_i).
  two = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), payload)
  arr = arrivals_of(two, [4, 1], [0, 0], mask=[True, True])
  _, new_server, _ = jax.jit(algo.aggregate)(server, params, arr, hp)
  np.testing.assert_allclose(flat(new_server.control), flat(c) + 3 * dc / n, rtol=1e-5, atol=1e-6)
  # A client that trains no step keeps its control variate.
  empty = broadcast(params, client=4, count=0.0, steps=0)
  _, row0, _ = algo.client_begin(row, server, empty, hp)
  payload0, row0 = algo.client_end(row0, empty, params, hp)
  np.testing.assert_array_equal(flat(row0.control), flat(row.control))
  assert not flat(payload0["control_delta"]).any()


def test_fedac_control_variates_see_the_engines_step_count():
  """The engine tells client_end each task's local steps: the control variate of a
  dispatched client is (w^v - w_i) / (K_i lr) - correction with K_i = its step count."""
  data = handmade_data()
  eng, params = make_engine(data, batch_size=4, epochs=3, algorithm="fedac")
  hp = {k: jnp.asarray(v, jnp.float32)[None] for k, v in build("fedac")[1].items()}
  clients = jnp.arange(5)
  state = eng.init(
    jax.random.PRNGKey(0)[None], jax.tree.map(lambda x: x[None], params), clients[None],
    clients[None], jnp.ones((1, 5), bool), hp, data,
  )  # fmt: skip
  steps = np.asarray(eng.num_steps(data.client_count))
  upload = state.payloads["upload"]
  for i in range(5):
    control = jax.tree.map(lambda x, i=i: x[0, i], state.client_state.control)
    delta = jax.tree.map(lambda x, i=i: x[0, i], upload)
    if steps[i] == 0:
      assert not flat(control).any()
    else:
      np.testing.assert_allclose(flat(control), -flat(delta) / (steps[i] * 0.1), rtol=1e-4)


def test_a_zero_gradient_correction_is_plain_local_sgd():
  data = handmade_data()
  eng, params = make_engine(data, batch_size=4, epochs=2)
  hp = {"lr": jnp.float32(0.1), "momentum": jnp.float32(0.5), "clip": jnp.float32(20.0)}
  plain = LocalTask(hp["lr"], hp["momentum"])
  zeros = plain._replace(correction=jax.tree.map(jnp.zeros_like, params))
  fn = jax.jit(lambda t: eng.local_train(params, t, 2, jax.random.PRNGKey(4), hp, data))
  (a, sa), (b, sb) = fn(plain), fn(zeros)
  assert int(sa.steps) == int(sb.steps) == 10
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)
  # The algorithm's first task (c = c_i = 0) is exactly such a task.
  algo, own = build("fedac")
  server, clients = algo.init(params, data.num_clients, {**hp, **own})
  task, _, _ = algo.client_begin(
    jax.tree.map(lambda x: x[2], clients), server, broadcast(params, 2), {**hp, **own}
  )
  assert not flat(task.correction).any()


# -- the shrunk CLI run ----------------------------------------------------------------


def test_the_four_baselines_run_from_the_command_line(cli_run):
  proc, workdir = cli_run
  finish(proc)
  with open(workdir / "summary.csv") as f:
    summary = list(csv.DictReader(f))
  assert [r["algorithm"] for r in summary] == CLI_ALGORITHMS.split(",")
  for r in summary:
    assert 0.0 <= float(r["final_accuracy"]) <= 1.0

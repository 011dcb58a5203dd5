"""Closed forms of the closed queueing network (spec/QUEUEING.md) against exact references.

References: brute-force enumeration of the product-form law, an exact Markov chain of a tagged
task (the relative delay, with no closed form used), float64 against float32, finite
differences. Simulation against the closed forms lives with the `queueing` schedule protocol.
"""

import itertools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fedqs_jax import queueing as q
from fedqs_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIVE_CLASSES = np.repeat([1.0, 2.0, 4.0, 8.0, 16.0], 2)  # 5 speed classes, 2 clients each


def network(n, seed, spread=10.0):
  """Random routing (Dirichlet(1)) and rates log-uniform in [1/spread, spread], float64."""
  rng = np.random.default_rng(seed)
  p = rng.dirichlet(np.ones(n))
  mu = np.exp(rng.uniform(-np.log(spread), np.log(spread), n))
  return p, mu


def states(n, c):
  """Every x in N^n with sum c."""
  return [x for x in itertools.product(range(c + 1), repeat=n) if sum(x) == c]


def brute_force(p, mu, c):
  """Z_0..Z_c, and the law pi_c as (states, probabilities), by enumeration."""
  rho = p / mu
  zs = [sum(np.prod(rho ** np.asarray(x)) for x in states(len(p), k)) for k in range(c + 1)]
  xs = np.asarray(states(len(p), c))
  weights = np.prod(rho**xs, axis=1)
  return np.asarray(zs), xs, weights / weights.sum()


def tagged_task(p, mu, c, j):
  """Exact E[D_j] and E[sojourn_j] of a task dispatched to client j, from a Markov chain.

  No closed form is used. By the arrival theorem the C - 1 other tasks are in pi_(C-1) when the
  tagged task is dispatched; it joins the back of queue j. State: (q, y) with q the tasks
  ahead of it at j and y the other clients' queues; tasks joining j behind it are inert until
  it completes. D counts the other tasks' completions (updates) before its own.
  """
  n = len(p)
  others = [i for i in range(n) if i != j]
  space = [
    (qa, y) for total in range(c) for qa in range(total + 1) for y in states(n - 1, total - qa)
  ]
  index = {s: k for k, s in enumerate(space)}
  m = len(space)
  a = np.zeros((m, m))
  b = np.zeros((m, 2))  # columns: expected completions of others, expected time
  for s, (qa, y) in enumerate(space):
    rate = mu[j] + sum(mu[i] for i, yi in zip(others, y, strict=True) if yi > 0)
    a[s, s] = rate
    b[s] = [0.0, 1.0]

    def complete(s, after_q, after_y, r):
      b[s, 0] += r  # one other task's completion: one update
      for k, pk in enumerate(p):  # its successor goes to k ~ p
        y2 = list(after_y)
        if k != j:
          y2[others.index(k)] += 1  # at j it would join behind the tagged task: inert
        a[s, index[(after_q, tuple(y2))]] -= r * pk

    for pos, (i, yi) in enumerate(zip(others, y, strict=True)):
      if yi > 0:
        y1 = list(y)
        y1[pos] -= 1
        complete(s, qa, y1, mu[i])
    if qa > 0:
      complete(s, qa - 1, y, mu[j])
  value = np.linalg.solve(a, b)
  _, xs, law = brute_force(p, mu, c - 1)
  start = [index[(x[j], tuple(x[i] for i in others))] for x in xs]
  return law @ value[start]


@pytest.mark.parametrize("method", q.METHODS)
@pytest.mark.parametrize("seed", [0, 1])
def test_normalizing_constants_match_enumeration(method, seed):
  p, mu = network(3, seed)
  with jax.enable_x64(True):
    log_z = np.asarray(q.log_normalizing_constants(p, mu, 4, method=method))
  zs, _, _ = brute_force(p, mu, 4)
  np.testing.assert_allclose(log_z, np.log(zs), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("c", [1, 2, 3, 4])
def test_closed_forms_match_enumeration(c):
  p, mu = network(3, 10 + c)
  zs, xs, law = brute_force(p, mu, c)
  _, xs_prev, law_prev = brute_force(p, mu, c - 1)
  with jax.enable_x64(True):
    lam = float(q.throughput(p, mu, c))
    tails = np.stack([np.asarray(q.queue_tail(p, mu, c, k)) for k in range(-1, c + 2)])
    queue = np.asarray(q.mean_queue_length(p, mu, c))
    delay = np.asarray(q.mean_delay(p, mu, c))
    delay1 = np.asarray(q.mean_delay(p, mu, c, plus_one=True))
    naive = np.asarray(q.naive_delay(p, mu, c))
    sojourn = np.asarray(q.mean_sojourn_time(p, mu, c))
    share = np.asarray(q.update_share(p, mu, c))
    util = np.asarray(q.utilisation(p, mu, c))
  np.testing.assert_allclose(lam, zs[c - 1] / zs[c], rtol=1e-12)
  expected_tails = np.stack([law @ (xs >= k) for k in range(-1, c + 2)])
  np.testing.assert_allclose(tails, expected_tails, rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(util, expected_tails[2], rtol=1e-12)  # k = 1
  np.testing.assert_allclose(queue, law @ xs, rtol=1e-12)
  queue_prev = law_prev @ xs_prev
  np.testing.assert_allclose(delay, queue_prev / p, rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(delay1, delay + 1, rtol=1e-12)
  np.testing.assert_allclose(naive, law @ xs / p, rtol=1e-12)
  np.testing.assert_allclose(sojourn, (1 + queue_prev) / mu, rtol=1e-12)
  np.testing.assert_allclose(share, p, rtol=1e-12)


@pytest.mark.parametrize("c", [1, 2, 3, 4])
def test_delay_and_sojourn_match_tagged_task_markov_chain(c):
  """The discrete Little's law E[D_i] = E_(C-1)[X_i] / p_i against an exact computation."""
  p, mu = network(3, 20 + c)
  exact = np.stack([tagged_task(p, mu, c, j) for j in range(3)])
  with jax.enable_x64(True):
    np.testing.assert_allclose(q.mean_delay(p, mu, c), exact[:, 0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(q.mean_sojourn_time(p, mu, c), exact[:, 1], rtol=1e-10)


@pytest.mark.parametrize(("n", "c"), [(1, 5), (4, 1), (4, 2), (5, 3), (7, 40), (50, 10)])
def test_average_staleness_is_concurrency_minus_one(n, c):
  p, mu = network(n, n * 100 + c, spread=100.0)
  with jax.enable_x64(True):
    total = float(jnp.sum(p * q.mean_delay(p, mu, c)))
  assert abs(total - (c - 1)) <= 1e-12 * max(c, 1)
  # float32: every term is a positive O(1) product, so the sum is within a few ulps of C - 1.
  total32 = float(jnp.sum(jnp.float32(p) * q.mean_delay(p.astype(np.float32), mu, c)))
  assert abs(total32 - (c - 1)) <= 1e-5 * max(c - 1, 1)
  if c == 1:
    np.testing.assert_array_equal(q.mean_delay(p, mu, c), 0.0)


def test_delay_decreases_with_speed_under_uniform_routing():
  mu = np.geomspace(0.1, 10.0, 8)
  p = np.full(8, 1 / 8)
  for c in (2, 8, 30):
    delay = np.asarray(q.mean_delay(p, mu, c))
    assert np.all(np.diff(delay) < 0), (c, delay)  # slower client (larger 1/mu): larger E[D]


def test_naive_delay_overestimates():
  for seed, c in [(0, 2), (1, 7), (2, 40)]:
    p, mu = network(6, seed, spread=30.0)
    with jax.enable_x64(True):
      naive, true = np.asarray(q.naive_delay(p, mu, c)), np.asarray(q.mean_delay(p, mu, c))
    # E_C[X_i] >= E_(C-1)[X_i], the gap can be below float precision at lightly loaded clients,
    # and the gaps, weighted by p, add up to C - (C - 1) = 1.
    assert np.all(naive >= true)
    np.testing.assert_allclose(np.sum(p * (naive - true)), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.sum(p * naive), c, rtol=1e-12)
    assert np.all(q.naive_delay(p, mu, c) >= q.mean_delay(p, mu, c))  # float32 too


def test_zero_routing_probability_has_the_limiting_delay():
  p, mu = network(4, 3)
  p0 = np.concatenate([p[:3] / p[:3].sum(), [0.0]])
  mu0 = np.concatenate([mu[:3], [0.5]])
  with jax.enable_x64(True):
    delay = np.asarray(q.mean_delay(p0, mu0, 5))
    lam_prev = float(q.throughput(p0, mu0, 4))
    eps = np.asarray([0, 0, 0, 1e-9])
    near = np.asarray(q.mean_delay((p0 + eps) / (1 + 1e-9), mu0, 5))
  assert np.all(np.isfinite(delay))
  np.testing.assert_allclose(delay[3], lam_prev / 0.5, rtol=1e-12)  # one service time of it
  np.testing.assert_allclose(delay, near, rtol=1e-6)


@pytest.mark.parametrize("c", [1, 5])
def test_gradients_match_finite_differences(c):
  p, mu = network(5, 7 + c)
  with jax.enable_x64(True):

    @jax.jit  # traced: finite differences leave the simplex, which eager calls would reject
    def forms(p, mu):
      k = q.BoundConstants()
      scalars = [q.throughput(p, mu, c), q.per_update_bound(p, mu, c, k, 50.0),
                 q.wall_clock_bound(p, mu, c, k, 50.0)]  # fmt: skip
      vectors = [q.mean_delay(p, mu, c), q.mean_sojourn_time(p, mu, c), q.queue_tail(p, mu, c, 2)]
      return jnp.concatenate([jnp.stack(scalars), *vectors])

    check_grads(forms, (p, mu), order=1, modes=("rev", "fwd"), eps=1e-6)


def test_extreme_rates_and_large_concurrency_are_finite_and_accurate():
  """Rates log-uniform in 1e-3..1e3, C = 1000: float32 finite and close to float64."""
  n, c = 300, 1000
  rng = np.random.default_rng(5)
  mu = np.exp(rng.uniform(np.log(1e-3), np.log(1e3), n))
  p = rng.dirichlet(np.ones(n))
  p32, mu32 = p.astype(np.float32), mu.astype(np.float32)

  def forms(p, mu):
    return (q.throughput(p, mu, c), q.mean_delay(p, mu, c), q.mean_sojourn_time(p, mu, c),
            q.log_normalizing_constants(p, mu, c), q.queue_tail(p, mu, c, 10))  # fmt: skip

  out32 = [np.asarray(x) for x in forms(p32, mu32)]
  with jax.enable_x64(True):
    out64 = [np.asarray(x) for x in forms(p32.astype(np.float64), mu32.astype(np.float64))]
    p64, mu64 = p32.astype(np.float64), mu32.astype(np.float64)
    buzen64 = np.asarray(q.log_normalizing_constants(p64, mu64, c, method="buzen"))
  for a, b in zip(out32, out64, strict=True):
    assert a.dtype == np.float32 and np.all(np.isfinite(a))
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-30)
  np.testing.assert_allclose(buzen64, out64[3], rtol=1e-10)  # two exact algorithms agree
  assert abs(float(np.sum(p32 * out32[1])) - (c - 1)) <= 1e-5 * c
  grad = jax.grad(lambda p: q.wall_clock_bound(p, mu32, c, q.BoundConstants(), 10.0))(p32)
  assert np.all(np.isfinite(np.asarray(grad)))


def test_concurrency_as_traced_value_matches_static():
  """The masked scan (one program for every C <= Cmax) used by `optimize_concurrency`."""
  p, mu = network(6, 4)
  cs = jnp.arange(1, 9)
  sols = jax.vmap(lambda c: q.solve(p, mu, c, max_concurrency=8))(cs)
  for c in (1, 3, 8):
    k = c - 1
    np.testing.assert_allclose(sols.throughput[k], q.throughput(p, mu, c), rtol=1e-6)
    np.testing.assert_allclose(
      sols.h_prev[k] / (sols.scale[k] * mu), q.mean_delay(p, mu, c), rtol=1e-5, atol=1e-7
    )


def test_bounds_follow_their_formulas():
  p, mu = network(5, 8)
  k = q.BoundConstants(c1=2.0, c2=0.5, c3=3.0, A=1.5, L=2.0, sigma2=0.7, M2=0.3, eta=0.05)
  c, n = 6, 5
  with jax.enable_x64(True):
    delay = np.asarray(q.mean_delay(p, mu, c))
    lam = float(q.throughput(p, mu, c))
    g = float(q.per_update_bound(p, mu, c, k, 200.0))
    g_time = float(q.wall_clock_bound(p, mu, c, k, 30.0))
    g_same = float(q.per_update_bound(p, mu, c, k, lam * 30.0))
  expected = (
    2.0 * 1.5 / (0.05 * 200.0)
    + 0.5 * 0.05 * 2.0 * 1.0 * np.sum(1 / p) / n**2
    + 3.0 * 0.05**2 * 2.0**2 * 1.0 * np.sum(delay / p) / n**2
  )
  np.testing.assert_allclose(g, expected, rtol=1e-12)
  np.testing.assert_allclose(g_time, g_same, rtol=1e-12)


def test_per_update_optimum_parks_tasks_at_slow_clients():
  """The paper's finding, qualitatively, on 5 speed classes (C = 10)."""
  mu, c, k = FIVE_CLASSES, 10, q.BoundConstants()
  per_update = q.optimize_routing(mu, c, "per_update", k, horizon=1000.0, steps=400)
  wall_clock = q.optimize_routing(mu, c, "wall_clock", k, horizon=10.0, steps=400)
  uniform = np.full(mu.size, 1 / mu.size)
  slow = mu == 1.0
  assert per_update.p[slow].sum() > wall_clock.p[slow].sum() > 0
  assert per_update.p[slow].sum() > 1.5 * uniform[slow].sum()  # parks tasks at slow clients
  assert per_update.throughput < 0.8 * wall_clock.throughput
  lam_u = float(q.throughput(uniform, mu, c))
  assert per_update.throughput < 0.6 * lam_u  # "cuts throughput drastically"
  np.testing.assert_allclose(per_update.throughput, q.throughput(per_update.p, mu, c), rtol=1e-5)
  for result, bound, horizon in [
    (per_update, q.per_update_bound, 1000.0),
    (wall_clock, q.wall_clock_bound, 10.0),
  ]:
    assert abs(result.p.sum() - 1) < 1e-12 and np.all(result.p > 0)
    at_uniform = float(bound(uniform, mu, c, k, horizon))
    np.testing.assert_allclose(result.initial_value, at_uniform, rtol=1e-5)
    np.testing.assert_allclose(result.value, bound(result.p, mu, c, k, horizon), rtol=1e-5)
    assert result.value < 0.99 * at_uniform
    assert result.value <= result.history.min()  # the best iterate is kept
  # Each objective's optimum is no worse than the other's routing under its own bound.
  assert per_update.value <= q.per_update_bound(wall_clock.p, mu, c, k, 1000.0) * (1 + 1e-6)
  assert wall_clock.value <= q.wall_clock_bound(per_update.p, mu, c, k, 10.0) * (1 + 1e-6)


def test_optimize_concurrency_enumerates():
  mu, k = FIVE_CLASSES[::2], q.BoundConstants()
  sweep = q.optimize_concurrency(mu, [1, 2, 4, 8], "wall_clock", k, horizon=10.0, steps=200)
  best = int(np.argmin(sweep.values))
  assert sweep.best.concurrency == sweep.concurrencies[best]
  assert 0 < best < 3  # wall clock: an interior C, staleness against throughput
  np.testing.assert_allclose(sweep.best.p, sweep.routings[best])
  single = q.optimize_routing(mu, 4, "wall_clock", k, horizon=10.0, steps=200)
  # Same optimisation, another program (masked scan to C = 8): equal up to rounding, which the
  # flat optimum turns into ~1e-4 differences in p but not in the value.
  np.testing.assert_allclose(sweep.routings[2], single.p, atol=1e-3)
  np.testing.assert_allclose(sweep.values[2], single.value, rtol=1e-5)
  per_update = q.optimize_concurrency(mu, [3, 1, 2], "per_update", k, 100.0, steps=20)
  assert per_update.best.concurrency == 1  # staleness only grows with C


BAD = [
  (dict(p=[0.5, 0.6]), "routing", "sum to 1"),
  (dict(p=[1.2, -0.2]), "routing", ">= 0"),
  (dict(p=[0.5, float("nan")]), "routing", "finite"),
  (dict(p=[0.3, 0.3, 0.4]), "routing", "shape"),
  (dict(p=[[0.5, 0.5]]), "routing", "vector"),
  (dict(p="abc"), "routing", "numbers"),
  (dict(mu=[1.0, 0.0]), "rates", "> 0"),
  (dict(mu=[1.0, -3.0]), "rates", "> 0"),
  (dict(mu=[1.0, float("inf")]), "rates", "finite"),
  (dict(c=0), "concurrency", ">= 1"),
  (dict(c=2.0), "concurrency", "integer"),
  (dict(c=True), "concurrency", "integer"),
]


@pytest.mark.parametrize(("bad", "field", "words"), BAD)
def test_bad_inputs_raise_config_error(bad, field, words):
  args = {"p": [0.5, 0.5], "mu": [1.0, 2.0], "c": 3, **bad}
  for fn in (q.validate, q.throughput, q.mean_delay, q.profile):
    with pytest.raises(ConfigError, match=field) as info:
      fn(args["p"], args["mu"], args["c"])
    assert words in str(info.value)
  assert q.validate([0.5, 0.5 + 1e-7], [1.0, 2.0], np.int64(3))[2] == 3  # float32-level slack


def test_bad_optimizer_inputs_raise_config_error():
  mu, k = [1.0, 2.0], q.BoundConstants()
  with pytest.raises(ConfigError, match="objective"):
    q.optimize_routing(mu, 2, "accuracy", k, horizon=1.0)
  with pytest.raises(ConfigError, match="horizon"):
    q.optimize_routing(mu, 2, "wall_clock", k, horizon=0.0)
  with pytest.raises(ConfigError, match="constants.eta"):
    q.optimize_routing(mu, 2, "wall_clock", k._replace(eta=-1.0), horizon=1.0)
  with pytest.raises(ConfigError, match="init"):
    q.optimize_routing(mu, 2, "wall_clock", k, horizon=1.0, init=[1.0, 0.0])
  with pytest.raises(ConfigError, match="method"):
    q.log_normalizing_constants([0.5, 0.5], mu, 2, method="exact")


def cli(*args):
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1", JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "experiments.queueing", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_cli_writes_the_library_optimum(tmp_path):
  out = tmp_path / "routing.json"
  proc = cli("--rate_classes=1:2,4:1,16:1", "--concurrency=3", "--objective=both",
             "--horizon=10", "--steps=100", f"--out={out}")  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "per_update vs wall_clock" in proc.stdout and "E[D]" in proc.stdout
  content = json.loads(out.read_text())
  routing = np.asarray(content["routing"])
  assert content["concurrency"] == 3 and content["objective"] == "wall_clock"
  assert routing.shape == (4,) and np.all(routing > 0) and abs(routing.sum() - 1) <= 1e-12
  mu = np.asarray([1.0, 1.0, 4.0, 16.0])
  lib = q.optimize_routing(mu, 3, "wall_clock", q.BoundConstants(), horizon=10.0, steps=100)
  np.testing.assert_allclose(routing, lib.p, rtol=1e-5)
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


@pytest.mark.parametrize(
  ("args", "field"),
  [
    (["--rates=1,-2", "--horizon=1"], "rates"),
    (["--rates=1,2", "--horizon=1", "--concurrency=-1"], "concurrency"),
    (["--rates=1,2", "--horizon=1", "--objective=fastest"], "objective"),
    (["--rates=1,2"], "horizon"),
  ],
)
def test_cli_bad_input_exits_2(args, field):
  proc = cli(*args)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert field in proc.stderr and "Traceback" not in proc.stderr


def test_queueing_digits_config_routings_reproduce_the_throughput_trade_off():
  from experiments.configs import queueing_digits
  from fedqs_jax import config as config_lib

  lam = {}
  for arg in ("uniform", "per_update", "wall_clock"):
    config = queueing_digits.get_config(arg)
    config_lib.validate(config)
    p = np.asarray(config.schedule.routing)
    lam[arg] = float(q.throughput(p, queueing_digits.RATES, queueing_digits.CONCURRENCY))
    rounds = lam[arg] * queueing_digits.TIME_BUDGET
    assert abs(config.schedule.num_rounds - rounds) <= queueing_digits.EVAL_EVERY / 2 + 1e-9
    slowest = p[queueing_digits.RATES == queueing_digits.RATES.min()].sum()
    if arg == "per_update":
      assert slowest > 0.2  # parks tasks at the slow clients
  assert lam["per_update"] < lam["uniform"] < lam["wall_clock"]

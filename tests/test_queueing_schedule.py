"""The `queueing` protocol (closed queueing network, spec/QUEUEING.md) and Generalized AsyncSGD.

- invariants of the schedule (conservation, causality, FIFO queues, C live tasks, slots);
- exact agreement with a plain-Python event-driven simulator (heapq) fed the same draws;
- hand-checked deterministic cases;
- long exponential runs against the product-form closed forms (Buzen, arrival theorem):
  throughput, each client's share of the updates and its mean staleness, within a
  Monte-Carlo error computed from the run (batch means);
- config validation of `schedule.concurrency` / `schedule.routing`;
- `gen_async_sgd`: the weight 1/(n p_I) fixed at dispatch, and uniform routing = AsyncSGD.
"""

from __future__ import annotations

import collections
import functools
import heapq
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import default
from fedqs_jax import algorithms, program, queueing, schedule
from fedqs_jax import config as config_lib
from fedqs_jax import run as run_lib
from fedqs_jax.algorithms import Arrivals, Broadcast, gen_async_sgd
from fedqs_jax.errors import ConfigError
from tests.common import tiny_config
from tests.test_schedule import check_invariants

LATENCY = np.array([1.0, 2.0, 3.0, 5.0, 8.0, 2.5, 1.5], np.float32)  # mean service 1 / mu_i
SKEWED = np.array([0.3, 0.05, 0.2, 0.1, 0.05, 0.2, 0.1])


def build(latency, *, dist="exponential", seeds=(0,), num_rounds=100, k=1, c=None, p=None):
  tm = schedule.TimeModel(latency=jnp.asarray(latency, jnp.float32), distribution=dist)
  keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
  return tm, keys, schedule.build(keys, tm, protocol="queueing", num_rounds=num_rounds,
                                  buffer_size=k, concurrency=c, routing=p)  # fmt: skip


# ----------------------------------------------------------------------------- references


def reference_queueing(key, tm: schedule.TimeModel, p, num_rounds: int, k: int, c: int) -> dict:
  """The protocol as a plain event-driven simulation (heapq), on the same random draws.

  Each client is a FIFO `deque` of (slot, version, service); the heap holds (finish time,
  client) of every busy client's head task, so ties go to the lowest client like argmin.
  Times are float32 sums, as in the jitted simulation.
  """
  n = len(np.asarray(tm.latency))
  cdf = jnp.cumsum(jnp.asarray(p, jnp.float32))
  draws = jax.jit(functools.partial(schedule.queueing_draws, key, tm, cdf), static_argnums=1)
  queues = [collections.deque() for _ in range(n)]
  heap: list = []

  def join(slot, version, client, service, now):
    if not queues[client]:
      heapq.heappush(heap, (np.float32(now + service), client))
    queues[client].append((slot, version, service))

  clients, service = map(np.asarray, draws(0, c))
  for slot in range(c):
    join(slot, 0, int(clients[slot]), service[slot], np.float32(0))
  out = collections.defaultdict(list)
  out["init_client"] = clients
  for t in range(num_rounds):
    arrivals = []
    for _ in range(k):
      finish, i = heapq.heappop(heap)
      slot, version, _ = queues[i].popleft()
      if queues[i]:
        heapq.heappush(heap, (np.float32(finish + queues[i][0][2]), i))
      arrivals.append((i, slot, version, finish))
    now = arrivals[-1][3]
    slots = [a[1] for a in reversed(arrivals)]  # LIFO
    clients, service = map(np.asarray, draws(t + 1, k))
    for slot, client, s in zip(slots, clients, service, strict=True):
      join(slot, t + 1, int(client), s, now)
    names = ("client", "slot", "version", "time")
    for name, column in zip(names, zip(*arrivals, strict=True), strict=True):
      out[f"arrival_{name}"].append(column)
    out["round_time"].append(now)
    out["dispatch_client"].append(clients)
    out["dispatch_slot"].append(slots)
  return {name: np.asarray(v) for name, v in out.items()}


def buzen(rho: np.ndarray, c: int) -> np.ndarray:
  """Normalising constants Z_0..Z_c of pi_c(x) ~ prod rho_i^x_i (float64, spec/QUEUEING.md)."""
  g = np.zeros(c + 1)
  g[0] = 1.0
  for r in rho:
    for j in range(1, c + 1):
      g[j] += r * g[j - 1]
  return g


def buzen_closed_forms(p: np.ndarray, mu: np.ndarray, c: int) -> dict:
  """Throughput lambda = Z_(C-1) / Z_C, update shares p_i, E[D_i] = E_(C-1)[X_i] / p_i.

  A float64 NumPy transcription of spec/QUEUEING.md, independent of `fedqs_jax.queueing`.
  """
  rho = p / mu
  z = buzen(rho, c)
  mean_queue = np.array(
    [sum(r**j * z[c - 1 - j] for j in range(1, c)) / z[c - 1] for r in rho]
  )  # E_(C-1)[X_i]
  return {"throughput": z[c - 1] / z[c], "share": p, "delay": mean_queue / p}


# ----------------------------------------------------------------------------- invariants


def check_queueing(s: schedule.Schedule, n: int, k: int, c: int) -> None:
  """Protocol-specific invariants of one unbatched queueing schedule (beyond check_invariants)."""
  check_invariants(s, protocol="queueing", num_clients=n, k=k)
  s = jax.tree.map(np.asarray, s)
  assert s.num_slots == c
  np.testing.assert_array_equal(np.sort(s.init_slot), np.arange(c))
  assert s.dispatch_mask.all() and s.init_mask.all()
  # C tasks live after every dispatch: the K freed slots are exactly the K reused ones (LIFO).
  np.testing.assert_array_equal(s.dispatch_slot, s.arrival_slot[:, ::-1])
  # Each client serves its tasks in the order they were dispatched to it (FIFO queues).
  dispatched = collections.defaultdict(list)
  for client, slot in zip(s.init_client, s.init_slot, strict=True):
    dispatched[int(client)].append((0, int(slot)))
  for t in range(s.num_rounds):
    for client, slot in zip(s.dispatch_client[t], s.dispatch_slot[t], strict=True):
      dispatched[int(client)].append((t + 1, int(slot)))
  served = collections.defaultdict(list)
  for t in range(s.num_rounds):
    for client, slot, v in zip(s.arrival_client[t], s.arrival_slot[t], s.arrival_version[t],
                               strict=True):  # fmt: skip
      served[int(client)].append((int(v), int(slot)))
  for client, tasks in served.items():
    assert tasks == dispatched[client][: len(tasks)], f"client {client} broke FIFO order"
  # Completions are in time order across rounds too (one event at a time).
  assert np.all(np.diff(s.arrival_time.reshape(-1)) >= 0)
  np.testing.assert_array_equal(s.round_time, s.arrival_time[:, -1])


CASES = [  # (distribution, K, C, routing)
  ("exponential", 1, 7, None),
  ("exponential", 1, 3, SKEWED),
  ("exponential", 3, 20, SKEWED),
  ("deterministic", 1, 10, None),
  ("deterministic", 2, 4, SKEWED),
  ("lognormal", 4, 4, None),
]


@pytest.mark.parametrize("dist,k,c,p", CASES)
def test_invariants_and_reference_simulator(dist, k, c, p):
  n, rounds = len(LATENCY), 150
  tm, keys, batched = build(LATENCY, dist=dist, seeds=(0, 1, 2), num_rounds=rounds, k=k, c=c, p=p)
  for g in range(3):
    check_queueing(schedule.unbatch(batched, g), n, k, c)
  # Same seed -> same schedule; the seed-vmapped build == one jitted seed at a time.
  again = build(LATENCY, dist=dist, seeds=(0, 1, 2), num_rounds=rounds, k=k, c=c, p=p)[2]
  jax.tree.map(np.testing.assert_array_equal, batched, again)
  routing = np.full(n, 1.0 / n) if p is None else p
  routing = jnp.asarray(routing, jnp.float32)
  kwargs = dict(protocol="queueing", num_rounds=rounds, buffer_size=k, concurrency=c)
  one = jax.jit(lambda key: schedule.simulate(key, tm, routing=routing, **kwargs))
  for g in range(3):
    single = jax.tree.map(np.asarray, one(keys[g]))
    jax.tree.map(np.testing.assert_array_equal, single, schedule.unbatch(batched, g))
  assert not np.array_equal(batched.arrival_client[0], batched.arrival_client[1])
  # Exactly the plain-Python event-driven simulation fed the same draws.
  ref = reference_queueing(keys[1], tm, routing, rounds, k, c)
  s = schedule.unbatch(batched, 1)
  for name, want in ref.items():
    np.testing.assert_array_equal(getattr(s, name), want, err_msg=name)


def test_one_task_is_never_stale():
  _, _, batched = build(LATENCY, seeds=(0, 1), num_rounds=300, c=1, p=SKEWED)
  assert np.all(np.asarray(batched.staleness) == 0)
  for g in range(2):
    check_queueing(schedule.unbatch(batched, g), len(LATENCY), 1, 1)


def test_deterministic_single_queue_by_hand():
  # p = (1, 0): every task queues at client 0 (service 2). C = 3 tasks, K = 2.
  # Init: slots 0, 1, 2 finish at 2, 4, 6. Round 0 takes (2, slot 0), (4, slot 1) and
  # dispatches v1 to slots [1, 0] (LIFO) behind slot 2: finishes 8, 10. Round 1 takes
  # (6, slot 2, v0), (8, slot 1, v1), dispatches v2 to [1, 2]: 12, 14. And so on.
  _, _, batched = build([2.0, 5.0], dist="deterministic", num_rounds=4, k=2, c=3, p=[1.0, 0.0])
  s = schedule.unbatch(batched, 0)
  np.testing.assert_array_equal(s.arrival_client, np.zeros((4, 2)))
  np.testing.assert_array_equal(s.arrival_time, [[2, 4], [6, 8], [10, 12], [14, 16]])
  np.testing.assert_array_equal(s.arrival_slot, [[0, 1], [2, 1], [0, 1], [2, 1]])
  np.testing.assert_array_equal(s.arrival_version, [[0, 0], [0, 1], [1, 2], [2, 3]])
  np.testing.assert_array_equal(s.staleness, [[0, 0], [1, 0], [1, 0], [1, 0]])
  np.testing.assert_array_equal(s.round_time, [4, 8, 12, 16])
  np.testing.assert_array_equal(s.dispatch_slot, [[1, 0], [1, 2], [1, 0], [1, 2]])
  # K = 1, C = 4 on one queue: after the initial tasks, every task waits C - 1 = 3 updates.
  _, _, batched = build([1.0, 5.0], dist="deterministic", num_rounds=8, c=4, p=[1.0, 0.0])
  s = schedule.unbatch(batched, 0)
  np.testing.assert_array_equal(s.round_time, np.arange(1, 9))
  np.testing.assert_array_equal(s.staleness[:, 0], [0, 1, 2, 3, 3, 3, 3, 3])


def test_random_routing_idles_clients_unlike_semi_async():
  # Equal deterministic latencies d, C = N tasks, K = 1. semi_async keeps every client busy:
  # N / d updates per unit of time. Random routing sends some tasks to busy clients while
  # others idle, so the queueing network completes fewer (at most N / d, with N servers).
  n = 4
  tm, keys, batched = build(np.full(n, 3.0), dist="deterministic", num_rounds=200, k=1, c=n)
  s = schedule.unbatch(batched, 0)
  semi = schedule.unbatch(
    schedule.build(keys, tm, protocol="semi_async", num_rounds=200, buffer_size=1), 0
  )
  rate = lambda x: x.num_rounds / float(x.round_time[-1])  # noqa: E731
  assert rate(semi) == pytest.approx(n / 3.0, rel=0.02)  # every client always busy
  assert rate(s) < rate(semi)  # random routing leaves clients idle while others queue


# ----------------------------------------------------------------------------- closed forms
# Theory: `fedqs_jax.queueing` (throughput, update_share, mean_delay; D = k - v convention).

THEORY_CASES = [(p, c) for p in ("uniform", "skewed") for c in (1, 4, 15)]  # C > n = 7 too
THEORY_ROUNDS, BURN_IN, BATCHES, SIGMAS = 60_000, 2_000, 30, 5.0


def batch_estimate(values: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
  """Ratio estimate sum(values) / sum(weights) and its batch-means standard error.

  `values`, `weights`: [B] per-batch sums. The standard error is the std of the B batch
  ratios over sqrt(B) (batches of a long stationary run are close to independent).
  """
  ratios = values / weights
  return float(values.sum() / weights.sum()), float(ratios.std(ddof=1) / np.sqrt(len(ratios)))


@pytest.mark.parametrize("routing,c", THEORY_CASES)
def test_long_exponential_runs_match_the_closed_forms(routing, c):
  n = len(LATENCY)
  p = np.full(n, 1.0 / n) if routing == "uniform" else SKEWED
  _, _, batched = build(LATENCY, num_rounds=THEORY_ROUNDS, c=c, p=p, seeds=(c,))
  s = schedule.unbatch(batched, 0)
  mu = 1.0 / LATENCY.astype(np.float64)
  theory = {
    "throughput": float(queueing.throughput(p, mu, c)),
    "share": np.asarray(queueing.update_share(p, mu, c), np.float64),
    "delay": np.asarray(queueing.mean_delay(p, mu, c), np.float64),
  }
  # The library's closed forms (float32 MVA) agree with a float64 Buzen transcription.
  for name, want in buzen_closed_forms(p, mu, c).items():
    np.testing.assert_allclose(theory[name], want, rtol=2e-5, atol=1e-6, err_msg=name)

  client = np.asarray(s.arrival_client)[BURN_IN:, 0]
  stale = np.asarray(s.staleness)[BURN_IN:, 0].astype(np.float64)
  time = np.asarray(s.round_time, np.float64)[BURN_IN - 1 :]
  batch = np.arange(len(client)) * BATCHES // len(client)  # B contiguous batches
  sums = lambda x: np.bincount(batch, x, minlength=BATCHES)  # noqa: E731
  counts = sums(np.ones(len(client)))
  edges = np.searchsorted(batch, np.arange(BATCHES + 1))
  spans = np.diff(time[edges])

  checks = [("throughput", *batch_estimate(counts, spans), theory["throughput"])]
  for i in range(n):
    mine = client == i
    checks.append((f"share[{i}]", *batch_estimate(sums(mine), counts), theory["share"][i]))
    checks.append((f"delay[{i}]", *batch_estimate(sums(stale * mine), sums(mine)),
                   theory["delay"][i]))  # fmt: skip
  for name, estimate, se, want in checks:
    assert abs(estimate - want) <= SIGMAS * se + 1e-9, (
      f"{name}: simulated {estimate:.5f} +- {se:.5f}, theory {want:.5f}"
    )
    if name.startswith("delay") and c == 1:
      assert estimate == 0.0 == want
    else:
      # Not vacuous: the error bar resolves e.g. D from D + 1 (measured: <= 6% relative).
      assert se < 0.1 * max(abs(want), 1.0), f"{name}: the run is too short to test anything"
  # Discrete Little's law: sum_i p_i E[D_i] = C - 1, the mean staleness of all updates.
  assert float(np.dot(p, theory["delay"])) == pytest.approx(c - 1, rel=1e-6, abs=1e-9)  # float32
  mean, se = batch_estimate(sums(stale), counts)
  assert abs(mean - (c - 1)) <= SIGMAS * se + 1e-9


# ----------------------------------------------------------------------------- config


def test_config_routing_and_concurrency_reach_the_schedule(tmp_path):
  n = 12
  p = np.arange(1, n + 1) / np.arange(1, n + 1).sum()
  path = tmp_path / "routing.json"
  path.write_text(json.dumps({"routing": p.tolist(), "concurrency": 5}))
  for routing in (",".join(map(str, p)), tuple(p), str(path)):
    config = tiny_config(**{"schedule.protocol": "queueing", "schedule.buffer_size": 2,
                            "schedule.routing": routing, "num_seeds": 2})  # fmt: skip
    config_lib.validate(config)
    got_p, got_c = schedule.queueing_parameters(routing, 0, n)
    np.testing.assert_allclose(got_p, p, rtol=1e-12)
    assert got_c == (5 if routing == str(path) else n)
    sched = program.make_schedule(config)
    assert sched.num_slots == got_c and sched.init_client.shape == (2, got_c)
    tm = config_lib.time_model(config)
    direct = schedule.build(program.seed_keys([0, 1], program.SCHEDULE_STREAM), tm,
                            protocol="queueing", num_rounds=20, buffer_size=2,
                            concurrency=got_c, routing=got_p)  # fmt: skip
    jax.tree.map(np.testing.assert_array_equal, sched, direct)
  # An explicit concurrency overrides the file's; 0 and "" give C = N and uniform routing.
  assert schedule.queueing_parameters(str(path), 3, n)[1] == 3
  p0, c0 = schedule.queueing_parameters("", 0, n)
  np.testing.assert_array_equal(p0, np.full(n, 1.0 / n))
  assert c0 == n
  assert schedule.queueing_parameters(None, 0, n)[1] == n


@pytest.mark.parametrize(
  "overrides,field",
  [
    ({"schedule.routing": "0.5,0.5"}, "schedule.routing"),  # not N values
    ({"schedule.routing": ",".join(["0.2"] * 12)}, "schedule.routing"),  # sums to 2.4
    ({"schedule.routing": ",".join(["-0.1", "0.2"] + ["0.09"] * 10)}, "schedule.routing"),
    ({"schedule.routing": "a,b"}, "schedule.routing"),
    ({"schedule.routing": "missing.json"}, "schedule.routing"),
    ({"schedule.concurrency": -1}, "schedule.concurrency"),
    ({"schedule.concurrency": 3, "schedule.buffer_size": 4}, "schedule.buffer_size"),
  ],
)
def test_config_validation(overrides, field):
  config = tiny_config(**{"schedule.protocol": "queueing", **overrides})
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    config_lib.validate(config)


def test_config_validation_bad_routing_file(tmp_path):
  path = tmp_path / "bad.json"
  path.write_text(json.dumps({"concurrency": 3}))
  config = tiny_config(**{"schedule.protocol": "queueing", "schedule.routing": str(path)})
  with pytest.raises(ConfigError, match="routing"):
    config_lib.validate(config)
  path.write_text(json.dumps({"routing": [1 / 12] * 12, "concurrency": 0.5}))
  with pytest.raises(ConfigError, match="concurrency"):
    config_lib.validate(config)


def test_gen_async_sgd_needs_the_queueing_protocol_for_non_uniform_routing():
  skewed = ",".join(["0.2", "0.0"] + ["0.08"] * 10)
  config = tiny_config(algorithms="gen_async_sgd", **{"schedule.routing": skewed})
  with pytest.raises(ConfigError, match="queueing"):
    config_lib.validate(config)
  config.schedule.protocol = "queueing"
  config.schedule.buffer_size = 1
  config_lib.validate(config)
  config = tiny_config(algorithms="gen_async_sgd")  # uniform: fine on any protocol
  config_lib.validate(config)


# ----------------------------------------------------------------------------- gen_async_sgd


def params_like(seed: int):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}  # fmt: skip


def test_gen_async_sgd_weight_is_fixed_at_dispatch():
  n = 5
  p = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
  algo = gen_async_sgd.gen_async_sgd(p)
  hparams = {"lr": jnp.float32(0.1), "momentum": jnp.float32(0.0), "server_lr": jnp.float32(0.7)}
  params = params_like(0)
  server, clients = algo.init(params, n, hparams)
  payloads, deltas = [], []
  for i in range(n):
    b = Broadcast(params, params, jnp.int32(i), jnp.int32(0), jnp.float32(10), lambda q: (0, 0))
    settings, row, info = algo.client_begin(clients[i], server, b, hparams)
    assert float(settings.lr) == pytest.approx(0.1)
    assert float(info["importance_weight"]) == pytest.approx(1.0 / (n * p[i]), rel=1e-6)
    trained = params_like(i + 1)
    payload, _ = algo.client_end(row, b, trained, hparams)
    delta = jax.tree.map(lambda a, w: np.asarray(a, np.float64) - np.asarray(w), trained, params)
    jax.tree.map(lambda x, d, i=i: np.testing.assert_allclose(x, d / (n * p[i]), rtol=1e-5),
                 payload, delta)  # fmt: skip
    payloads.append(payload)
    deltas.append(delta)
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *payloads)
  arr = Arrivals(stacked, jnp.arange(n, dtype=jnp.int32), jnp.arange(n, dtype=jnp.int32),
                 jnp.ones(n), jnp.zeros(n, jnp.int32), jnp.ones(n, bool))  # fmt: skip
  new, _, _ = jax.jit(algo.aggregate)(server, params, arr, hparams)
  # w + server_lr * (1/K) sum_j Delta_j / (n p_j)
  expected = jax.tree.map(
    lambda w, *d: np.asarray(w) + 0.7 * sum(dj / (n * pj) for dj, pj in zip(d, p, strict=True)) / n,
    params, *deltas,
  )  # fmt: skip
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), new, expected)
  # The aggregate uses the weights the payloads carry, not the arrival's client id.
  other = arr._replace(client=jnp.zeros(n, jnp.int32), num_examples=jnp.arange(n) * 3.0)
  again, _, _ = jax.jit(algo.aggregate)(server, params, other, hparams)
  jax.tree.map(np.testing.assert_array_equal, new, again)
  # Uniform routing: weight exactly 1.
  np.testing.assert_array_equal(gen_async_sgd.importance_weights(np.full(7, 1 / 7)), 1.0)


def _train(config, name):
  from fedqs_jax import data as data_lib

  data = data_lib.load(config.data, config.data.seed)
  sched = program.make_schedule(config)
  return run_lib.train(config, name, data, sched)


def test_gen_async_sgd_with_uniform_routing_is_plain_async_sgd():
  # Plain AsyncSGD here is FedSGD with K = 1: w <- w + server_lr Delta on every completion.
  config = tiny_config(**{"schedule.protocol": "queueing", "schedule.buffer_size": 1,
                          "schedule.concurrency": 6, "time.distribution": "exponential",
                          "schedule.num_rounds": 10, "fedsgd.server_lr": 0.8,
                          "gen_async_sgd.server_lr": 0.8})  # fmt: skip
  sched = program.make_schedule(config)
  assert np.asarray(sched.staleness).max() > 0  # a stale, asynchronous run
  ours, theirs = _train(config, "gen_async_sgd"), _train(config, "fedsgd")
  np.testing.assert_array_equal(ours["test_loss"], theirs["test_loss"])
  np.testing.assert_array_equal(ours["client_steps"], theirs["client_steps"])
  assert len(set(np.asarray(ours["test_loss"]).ravel().tolist())) > 1  # it trained
  np.testing.assert_array_equal(ours["dispatch_importance_weight"], ours["dispatched"])  # w = 1


def test_gen_async_sgd_buffered_with_uniform_routing_is_fedbuff_without_discount():
  n, k = 10, 4
  algo = gen_async_sgd.gen_async_sgd(np.full(n, 1.0 / n))
  config = default.get_config()
  config.fedbuff.beta, config.fedbuff.server_lr = 0.0, 0.8
  fedbuff, fedbuff_hp = algorithms.build("fedbuff", config)
  hparams = {"lr": jnp.float32(0.1), "momentum": jnp.float32(0.0), "server_lr": jnp.float32(0.8)}
  fedbuff_hp = {**hparams, **jax.tree.map(jnp.float32, fedbuff_hp)}
  params = params_like(0)
  server, clients = algo.init(params, n, hparams)
  fb_server, _ = fedbuff.init(params, n, fedbuff_hp)
  ours, theirs = [], []
  for i in range(k):
    b = Broadcast(params, params, jnp.int32(2 * i), jnp.int32(0), jnp.float32(5), lambda q: (0, 0))
    _, row, _ = algo.client_begin(clients[2 * i], server, b, hparams)
    ours.append(algo.client_end(row, b, params_like(i + 1), hparams)[0])
    theirs.append(fedbuff.client_end((), b, params_like(i + 1), fedbuff_hp)[0])
  stack = lambda xs: jax.tree.map(lambda *x: jnp.stack(x), *xs)  # noqa: E731
  staleness = jnp.array([0, 3, 1, 7], jnp.int32)
  meta = (jnp.arange(k, dtype=jnp.int32) * 2, staleness, jnp.ones(k), -staleness,
          jnp.ones(k, bool))  # fmt: skip
  new, _, _ = algo.aggregate(server, params, Arrivals(stack(ours), *meta), hparams)
  want, _, _ = fedbuff.aggregate(fb_server, params, Arrivals(stack(theirs), *meta), fedbuff_hp)
  jax.tree.map(np.testing.assert_array_equal, new, want)


def test_gen_async_sgd_is_registered_with_its_hyperparameter():
  assert "gen_async_sgd" in algorithms.names()
  config = default.get_config()
  algo, hparams = algorithms.build("gen_async_sgd", config)
  assert algo.name == "gen_async_sgd" and hparams == {"server_lr": 1.0}

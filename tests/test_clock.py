"""The schedule's clock: simulated time kept exactly at any run length, and lognormal sigma.

- a 10^6-update `queueing` run matches the product-form closed forms per client (the
  float32 clock of before drifted: completions tied and were reordered past t ~ 2^19);
- deterministic latencies on a fine dyadic grid give exactly the integer-time reference
  (ties stay ties) long after a float32 clock would have rounded them, in `sync`,
  `semi_async` and `queueing`;
- `time.sigma` of `lognormal` is refused when its float32 service times would underflow.
"""

from __future__ import annotations

import collections
import heapq

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedqs_jax import config as config_lib
from fedqs_jax import queueing, schedule
from fedqs_jax.errors import ConfigError
from tests.common import tiny_config

# ----------------------------------------------------------------------------- long run
# The network: mu = (4, 2, 1, 0.5, 0.25), C = 3, K = 1, uniform routing. 16 seeds x
# 10^6 updates reach t ~ 9e5 > 2^19, where float32 spacing (1/16) is a quarter of the fastest
# mean service time (1/4). 16 seeds take about as long as 8 (the vmapped event loop is bound by
# its per-event overhead): ~40 s and ~1 GB on two busy cores.

MU = np.array([4.0, 2.0, 1.0, 0.5, 0.25])
LONG_ROUNDS, LONG_SEEDS, BURN_IN, BLOCKS, SIGMAS = 1_000_000, 16, 1_000, 10, 4.0


def batch_means(values: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
  """sum(values) / sum(weights) and its batch-means standard error.

  `values`, `weights`: [batches] sums over contiguous blocks of the runs (each seed cut into
  BLOCKS blocks of 10^5 updates, far longer than the network's correlation time, so the
  blocks' ratios are close to independent draws). SE = std of the ratios / sqrt(batches).
  """
  ratios = values / weights
  return float(values.sum() / weights.sum()), float(ratios.std(ddof=1) / np.sqrt(len(ratios)))


def test_a_million_queueing_updates_match_the_closed_forms():
  n, c = len(MU), 3
  p = np.full(n, 1.0 / n)
  tm = schedule.TimeModel(latency=jnp.asarray(1.0 / MU, jnp.float32), distribution="exponential")
  keys = jnp.stack([jax.random.PRNGKey(s) for s in range(LONG_SEEDS)])
  sched = schedule.build(keys, tm, protocol="queueing", num_rounds=LONG_ROUNDS, buffer_size=1,
                         concurrency=c, routing=p)  # fmt: skip
  client = np.asarray(sched.arrival_client)[:, BURN_IN:, 0]  # [S, T']
  stale = np.asarray(sched.staleness)[:, BURN_IN:, 0].astype(np.float64)
  time = np.asarray(sched.round_time, np.float64)[:, BURN_IN - 1 :]
  del sched
  assert time[:, -1].min() > 2**19  # long enough for the float32 clock to fail
  # Batches: each seed's updates cut into BLOCKS contiguous blocks, [S * BLOCKS].
  length = client.shape[1]
  edges = np.arange(BLOCKS + 1) * length // BLOCKS

  def sums(x):
    return np.add.reduceat(x, edges[:-1], axis=1).reshape(-1)

  counts = sums(np.ones_like(stale))
  spans = np.diff(time[:, edges], axis=1).reshape(-1)
  delay = np.asarray(queueing.mean_delay(p, MU, c), np.float64)
  rows = [("throughput", *batch_means(counts, spans), float(queueing.throughput(p, MU, c)))]
  for i in range(n):
    mine = (client == i).astype(np.float64)
    rows.append((f"delay[{i}]", *batch_means(sums(stale * mine), sums(mine)), delay[i]))
  report = "\n".join(f"{name}: simulated {est:.5f} +- {se:.5f}, closed form {want:.5f}"
                     for name, est, se, want in rows)  # fmt: skip
  print(report)
  for name, est, se, want in rows:
    assert abs(est - want) < SIGMAS * se, f"{name} is off by > {SIGMAS} SE:\n{report}"
    # Not vacuous: the float32 clock's bias on client 0 (0.246 -> 0.223) is > 4 SE.
    assert se < 0.005 * max(want, 1.0), f"{name}: the error bar is too wide\n{report}"
  # Discrete Little's law of the closed forms: sum_i p_i E[D_i] = C - 1.
  assert float(np.dot(p, delay)) == pytest.approx(c - 1, rel=1e-5)


# ----------------------------------------------------------------------------- exact times
# Latencies (i + 1) X with X = 1 + 2^-10: every event happens at an integer multiple m X, and
# ties are frequent (client 0 ties client 1 every second completion...). A float32 clock
# holds m X exactly only while m X < 2^14; the rebased one always (its residuals stay below
# 2^12 with 2^-10 spacing). Runs end near m ~ 3 10^4.

X = 1.0 + 2.0**-10


def exact_time(m) -> np.ndarray:
  """The float32 nearest to m X (integer m), what the schedule must report."""
  return (np.asarray(m, np.float64) * X).astype(np.float32)


def semi_async_reference(units: list[int], num_rounds: int) -> dict:
  """`semi_async` with K = 1 in integer time (units of X): ties go to the lower client."""
  heap = [(u, i) for i, u in enumerate(units)]
  heapq.heapify(heap)
  out = collections.defaultdict(list)
  for _ in range(num_rounds):
    m, i = heapq.heappop(heap)
    out["arrival_client"].append([i])
    out["round_time"].append(m)
    heapq.heappush(heap, (m + units[i], i))
  return out


def queueing_reference(units: list[int], draws: np.ndarray, num_rounds: int, k: int, c: int):
  """`queueing` in integer time (units of X); `draws[v]` = the clients of version v's tasks."""
  queues = [collections.deque() for _ in units]
  heap: list = []

  def join(slot, version, client, now):
    if not queues[client]:
      heapq.heappush(heap, (now + units[client], client))
    queues[client].append((slot, version))

  for slot in range(c):
    join(slot, 0, int(draws[0][slot]), 0)
  out = collections.defaultdict(list)
  for t in range(num_rounds):
    done = []
    for _ in range(k):
      m, i = heapq.heappop(heap)
      slot, version = queues[i].popleft()
      if queues[i]:
        heapq.heappush(heap, (m + units[i], i))
      done.append((i, slot, version, m))
    for slot, client in zip([d[1] for d in reversed(done)], draws[t + 1][:k], strict=True):
      join(slot, t + 1, int(client), done[-1][3])
    for name, column in zip(("client", "slot", "version", "time"), zip(*done, strict=True),
                            strict=True):  # fmt: skip
      out[f"arrival_{name}"].append(list(column))
    out["round_time"].append(done[-1][3])
  return out


@pytest.mark.parametrize("protocol", ["sync", "semi_async", "queueing"])
def test_deterministic_times_stay_exact_and_ties_stay_ties(protocol):
  units = [1, 2, 3, 4, 6, 5, 7] if protocol == "queueing" else [1, 2, 3]
  tm = schedule.TimeModel(latency=jnp.asarray(np.array(units) * X, jnp.float32))
  assert np.all(np.asarray(tm.latency, np.float64) == np.array(units) * X)  # exact in float32
  keys = jax.random.PRNGKey(7)[None]
  if protocol == "sync":
    rounds = 10_000
    s = schedule.unbatch(schedule.build(keys, tm, protocol="sync", num_rounds=rounds), 0)
    want = {"round_time": 3 * np.arange(1, rounds + 1)}
    np.testing.assert_array_equal(s.arrival_time[:, 0], exact_time(want["round_time"] - 2))
  elif protocol == "semi_async":
    rounds = 60_000
    s = schedule.unbatch(schedule.build(keys, tm, protocol="semi_async", num_rounds=rounds), 0)
    want = semi_async_reference(units, rounds)
  else:
    rounds, k, c = 20_000, 2, 5
    p = np.array([0.1, 0.2, 0.1, 0.15, 0.15, 0.2, 0.1])
    s = schedule.unbatch(schedule.build(keys, tm, protocol="queueing", num_rounds=rounds,
                                        buffer_size=k, concurrency=c, routing=p), 0)  # fmt: skip
    cdf = jnp.cumsum(jnp.asarray(p, jnp.float32))
    # The routing draws of each version: the C initial tasks, then K per round.
    draw = jax.jit(lambda v, count: schedule.queueing_draws(keys[0], tm, cdf, v, count)[0],
                   static_argnums=1)  # fmt: skip
    later = jax.vmap(lambda v: draw(v, k))(jnp.arange(1, rounds + 1))
    draws = [np.asarray(draw(0, c))] + list(np.asarray(later))
    want = queueing_reference(units, draws, rounds, k, c)
    want["arrival_time"] = exact_time(want["arrival_time"])
  assert want["round_time"][-1] > 2**14 * 1.5  # far past float32's exact range for m X
  want["round_time"] = exact_time(want["round_time"])
  for name, value in want.items():  # the event order (ties), then the times
    np.testing.assert_array_equal(getattr(s, name), value, err_msg=name)


def test_epoch_length_is_a_power_of_two_above_a_thousand_fastest_latencies():
  for latency in ([1.0, 8.0], [0.25, 4.0], [3.0, 3.0], [1e-3, 1e3], [2.0**-30, 1.0]):
    latency = np.asarray(latency, np.float32)
    delta = float(schedule.epoch_length(jnp.asarray(latency)))
    assert np.log2(delta) == np.round(np.log2(delta))
    scale = max(float(latency.min()), float(latency.max()) * 2.0**-20)
    assert 2**10 * scale < delta <= 2**11 * scale


# ----------------------------------------------------------------------------- lognormal sigma


def lognormal_config(sigma, latencies=None):
  overrides = {"time.distribution": "lognormal", "time.sigma": sigma}
  if latencies is not None:
    overrides["time.latencies"] = tuple(latencies)
  return tiny_config(**overrides)


@pytest.mark.parametrize("sigma", [float("inf"), float("nan"), 1e3, 9.0, 0.0, -0.5])
def test_lognormal_sigma_out_of_range_is_refused(sigma):
  # Non-finite floats may be refused first by the config-wide float check.
  allowed = r"(must be in \(0, 8\.51\]|must be a finite number)"
  with pytest.raises(ConfigError, match=r"time\.sigma=\S+ is invalid: " + allowed):
    config_lib.validate(lognormal_config(sigma, latencies=[1.0] * 12))


def test_lognormal_sigma_bound_keeps_service_times_normal_float32():
  config_lib.validate(lognormal_config(0.5))
  config_lib.validate(lognormal_config(8.5, latencies=[1.0] * 12))
  # The bound shrinks for faster clients: ln(latency) enters the underflow condition.
  fast = [1e-6] + [1.0] * 11
  bound = schedule.max_lognormal_sigma(fast)
  assert bound < schedule.max_lognormal_sigma([1.0] * 12) == pytest.approx(8.51, abs=0.01)
  with pytest.raises(ConfigError, match="time.sigma"):
    config_lib.validate(lognormal_config(bound + 0.01, latencies=fast))
  # At the bound, float32 draws stay finite normal numbers; at twice it they underflow to 0.
  clients = jnp.zeros((1_000_000,), jnp.int32)
  for latency in (1.0, 1e-6):
    tm = schedule.TimeModel(latency=jnp.asarray([latency], jnp.float32), distribution="lognormal",
                            sigma=schedule.max_lognormal_sigma([latency]))  # fmt: skip
    service = np.asarray(tm.sample(jax.random.PRNGKey(0), clients))
    assert np.all(np.isfinite(service)) and service.min() >= np.finfo(np.float32).tiny
    tm = tm.replace(sigma=2 * tm.sigma)
    assert np.asarray(tm.sample(jax.random.PRNGKey(0), clients)).min() == 0.0
  with pytest.raises(ValueError, match="sigma"):
    schedule.TimeModel(latency=jnp.ones(3), distribution="lognormal", sigma=float("inf")).sample(
      jax.random.PRNGKey(0), jnp.zeros((2,), jnp.int32)
    )

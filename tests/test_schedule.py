"""Schedule invariants for every protocol and time model, and the tick reference loop."""

import csv
import os

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedqs_jax import schedule

RESOURCES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "fedqs_resources")
REFERENCE_FILES = {
  "resources_No_100_max_50.csv": 100,
  "resources_No_50_max_20.csv": 50,
  "resources_No_200_max_100.csv": 200,
  "resources_No_200_max_50.csv": 200,
}


def reference_latencies(name: str) -> np.ndarray:
  with open(os.path.join(RESOURCES, name)) as f:
    rows = [r for r in csv.reader(f) if r]
  return np.array([int(x) for x in rows[-1] if x.strip()][: REFERENCE_FILES[name]])


def tick_reference(latency, k, num_rounds):
  """The FedQS reference loop, transcribed from spec/FEDQS.md in plain Python."""
  n = len(latency)
  counter, recorded, buffer, version, out, tick = [0] * n, [0] * n, [], 0, [], 0
  while len(out) < num_rounds:
    for i in range(n):
      if counter[i] == 0:
        recorded[i] = version
        counter[i] = 1
      elif counter[i] == latency[i]:
        buffer.append((i, recorded[i]))
        counter[i] = 0
      else:
        counter[i] += 1
    if len(buffer) >= k:
      agg, buffer = buffer[:k], buffer[k:]
      out.append((tick, [c for c, _ in agg], [v for _, v in agg], [len(out) - v for _, v in agg]))
      version += 1
    tick += 1
  return out


@pytest.mark.parametrize("name", sorted(REFERENCE_FILES))
def test_tick_equals_reference_loop(name):
  latency = reference_latencies(name)
  num_rounds, k = 150, 10
  sched = schedule.unbatch(
    schedule.build(
      jax.random.PRNGKey(0)[None],
      schedule.TimeModel(latency=jnp.asarray(latency, jnp.float32)),
      protocol="tick",
      num_rounds=num_rounds,
      buffer_size=k,
    ),
    0,
  )
  ref = tick_reference(latency, k, num_rounds)
  np.testing.assert_array_equal(sched.round_time, [r[0] for r in ref])
  np.testing.assert_array_equal(sched.arrival_client, [r[1] for r in ref])
  np.testing.assert_array_equal(sched.arrival_version, [r[2] for r in ref])
  np.testing.assert_array_equal(sched.staleness, [r[3] for r in ref])
  check_invariants(sched, protocol="tick", num_clients=len(latency), k=k)


def check_invariants(s: schedule.Schedule, protocol: str, num_clients: int, k: int, m=None):
  """Conservation, causality, slot safety and counts of one (unbatched) schedule."""
  s = jax.tree.map(np.asarray, s)
  t_rounds = s.num_rounds
  round_time = np.asarray(s.round_time)
  assert np.all(np.diff(round_time) >= 0), "the clock went back"
  assert np.all(round_time >= 0)
  staleness = np.asarray(s.staleness)
  assert staleness.shape == (t_rounds, k)
  assert np.all(staleness >= 0)
  np.testing.assert_array_equal(
    staleness, np.arange(t_rounds)[:, None] - np.asarray(s.arrival_version)
  )
  arrival_time = np.asarray(s.arrival_time)
  assert np.all(arrival_time <= round_time[:, None] + 1e-6), "aggregated before it arrived"
  assert np.all(np.diff(arrival_time, axis=1) >= 0), "arrivals not in FIFO order"

  # Replay the events: slot -> (client, version) of the task living in it.
  live: dict[int, tuple[int, int]] = {}
  dispatch_time = {0: 0.0}
  delivered = 0

  def dispatch(clients, slots, mask, version):
    for c, sl, ok in zip(np.asarray(clients), np.asarray(slots), np.asarray(mask), strict=True):
      if ok:
        assert int(sl) not in live, f"slot {sl} overwritten before it was aggregated"
        live[int(sl)] = (int(c), version)

  dispatch(s.init_client, s.init_slot, s.init_mask, 0)
  for t in range(t_rounds):
    for c, sl, v, at in zip(
      np.asarray(s.arrival_client[t]),
      np.asarray(s.arrival_slot[t]),
      np.asarray(s.arrival_version[t]),
      arrival_time[t],
      strict=True,
    ):
      assert int(sl) in live, f"round {t}: slot {sl} holds no task"
      assert live.pop(int(sl)) == (int(c), int(v)), "arrival does not match its dispatch"
      assert at >= dispatch_time[int(v)] - 1e-6, "arrived before it was dispatched"
      delivered += 1
    dispatch_time[t + 1] = float(round_time[t])
    dispatch(s.dispatch_client[t], s.dispatch_slot[t], s.dispatch_mask[t], t + 1)
    assert len(live) <= s.num_slots
  assert delivered == t_rounds * k

  counts = np.asarray(s.dispatch_mask).sum(1)
  if protocol in ("semi_async", "async"):
    np.testing.assert_array_equal(counts, k)
    assert len(live) == num_clients  # every client always has exactly one task in flight
    assert s.num_slots == num_clients
  if protocol == "sync":
    np.testing.assert_array_equal(counts, m)
    assert np.all(staleness == 0)
    assert s.num_slots == m
    assert len(live) == m  # all but the last round's tasks were delivered exactly once


LATENCY = np.random.default_rng(0).integers(1, 51, size=40).astype(np.float32)
CASES = [
  (protocol, dist)
  for protocol in ("sync", "semi_async", "async")
  for dist in schedule.DISTRIBUTIONS
] + [("tick", "deterministic")]


@pytest.mark.parametrize("protocol,dist", CASES)
def test_invariants_every_protocol_and_time_model(protocol, dist):
  tm = schedule.TimeModel(latency=jnp.asarray(LATENCY), distribution=dist)
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  kwargs = dict(protocol=protocol, num_rounds=120, buffer_size=5, clients_per_round=8)
  batched = schedule.build(keys, tm, **kwargs)
  k = 1 if protocol == "async" else (8 if protocol == "sync" else 5)
  for g in range(3):
    check_invariants(schedule.unbatch(batched, g), protocol, len(LATENCY), k, m=8)

  # Same seed -> same schedule; vmapped over seeds == one seed at a time.
  again = schedule.build(keys, tm, **kwargs)
  jax.tree.map(np.testing.assert_array_equal, batched, again)
  simulate_one = jax.jit(lambda key: schedule.simulate(key, tm, **kwargs))
  for g in range(3):
    single = simulate_one(keys[g])
    single = schedule.finalize(single)
    one = schedule.unbatch(batched, g)
    for field in ("arrival_client", "arrival_slot", "arrival_version", "round_time"):
      np.testing.assert_array_equal(getattr(single, field), getattr(one, field))
    d = single.dispatch_client.shape[-1]
    np.testing.assert_array_equal(single.dispatch_client, one.dispatch_client[:, :d])
  if dist != "deterministic":
    assert not np.array_equal(batched.round_time[0], batched.round_time[1])


def test_semi_async_equal_latencies_full_buffer_is_synchronous():
  n = 12
  tm = schedule.TimeModel(latency=jnp.full((n,), 7.0))
  semi = schedule.unbatch(
    schedule.build(jax.random.PRNGKey(0)[None], tm, protocol="semi_async", num_rounds=10,
                   buffer_size=n), 0)  # fmt: skip
  sync = schedule.unbatch(
    schedule.build(jax.random.PRNGKey(0)[None], tm, protocol="sync", num_rounds=10), 0
  )
  for field in ("arrival_client", "arrival_slot", "staleness", "round_time", "dispatch_client"):
    np.testing.assert_array_equal(getattr(semi, field), getattr(sync, field))
  np.testing.assert_array_equal(semi.round_time, 7.0 * np.arange(1, 11))
  assert np.all(np.asarray(semi.staleness) == 0)


def test_sync_samples_distinct_clients_and_waits_for_the_slowest():
  tm = schedule.TimeModel(latency=jnp.asarray(LATENCY), distribution="exponential")
  s = schedule.unbatch(
    schedule.build(jax.random.PRNGKey(1)[None], tm, protocol="sync", num_rounds=30,
                   clients_per_round=10), 0)  # fmt: skip
  for t in range(30):
    assert len(set(np.asarray(s.arrival_client[t]).tolist())) == 10
  start = np.concatenate([[0.0], np.asarray(s.round_time)[:-1]])
  np.testing.assert_allclose(np.asarray(s.arrival_time).max(1), s.round_time, rtol=1e-6)
  assert np.all(np.asarray(s.arrival_time) >= start[:, None])


def test_tick_backlog_grows_when_arrivals_outpace_aggregation():
  # 1:50 with N = 200 uploads ~14 entries per tick but aggregates at most 10.
  latency = reference_latencies("resources_No_200_max_50.csv")
  s = schedule.unbatch(
    schedule.build(jax.random.PRNGKey(0)[None],
                   schedule.TimeModel(latency=jnp.asarray(latency, jnp.float32)),
                   protocol="tick", num_rounds=300, buffer_size=10), 0)  # fmt: skip
  assert s.num_slots > 200 + 100  # tasks in training + a growing backlog
  late = np.asarray(s.staleness)[-50:]
  early = np.asarray(s.staleness)[50:100]
  assert late.mean() > early.mean()


def test_overflowing_capacity_is_reported():
  tm = schedule.TimeModel(latency=jnp.asarray(LATENCY))
  raw = schedule.simulate(jax.random.PRNGKey(0), tm, protocol="tick", num_rounds=50,
                          buffer_size=5, buffer_capacity=4)  # fmt: skip
  with pytest.raises(RuntimeError, match="overflow"):
    schedule.finalize(raw)


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(
  latency=st.lists(st.integers(1, 9), min_size=6, max_size=6),
  k=st.integers(1, 6),
)
def test_tick_equals_reference_loop_on_random_latencies(latency, k):
  # N = 6 and T = 25 are fixed so that at most 6 programs compile (one per K).
  sched = schedule.unbatch(
    schedule.build(jax.random.PRNGKey(0)[None],
                   schedule.TimeModel(latency=jnp.asarray(latency, jnp.float32)),
                   protocol="tick", num_rounds=25, buffer_size=k), 0)  # fmt: skip
  ref = tick_reference(latency, k, 25)
  np.testing.assert_array_equal(sched.round_time, [r[0] for r in ref])
  np.testing.assert_array_equal(sched.arrival_client, [r[1] for r in ref])
  np.testing.assert_array_equal(sched.arrival_version, [r[2] for r in ref])
  check_invariants(sched, protocol="tick", num_clients=6, k=k)

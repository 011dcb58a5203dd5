"""The schedule phase: when every task is dispatched and when it arrives.

In every protocol simulated here, *when* a client finishes depends on its
speed, the time model and the seed, never on the model weights. So a run
first computes its whole event sequence (this module, no training), then a
training scan consumes it (`fedqs_jax.engine`). Every algorithm of a
comparison sees the very same arrivals.

Rounds are 0-based: round `t` aggregates `K` arrivals into version `t + 1`.
A task dispatched with version `v` and aggregated in round `t` has
`staleness = t - v >= 0`. Tasks are trained at dispatch ("train at dispatch,
deliver at arrival") into a *slot* of the payload buffer; a slot is reused
only after its task was aggregated, and the number of slots is the live-task
bound `Schedule.num_slots`.

Protocols (all return a `Schedule`):

  sync        M sampled clients per round (or all N); every participant starts
              from the current version; round time = slowest participant.
  semi_async  N always-busy clients; the server aggregates the K earliest
              arrivals, then re-dispatches those K clients with the new version.
  async       semi_async with K = 1.
  tick        the FedQS reference loop (spec/FEDQS.md), exactly: integer
              latencies, a FIFO buffer, at most one aggregation per tick, a
              client restarts one tick after its upload with the latest version.

Time models (`TimeModel`): per-client mean latencies with a per-task
distribution: `deterministic` (the latency itself), `exponential` (mean =
latency) or `lognormal` (mean = latency, log-std `sigma`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

PROTOCOLS = ("sync", "semi_async", "async", "tick")
DISTRIBUTIONS = ("deterministic", "exponential", "lognormal")


@flax.struct.dataclass
class TimeModel:
  """Service-time model of the clients.

  Attributes:
    latency: [N] float32 mean service time of each client (ticks or seconds).
    distribution: one of `DISTRIBUTIONS` (static).
    sigma: log-standard deviation of the `lognormal` distribution (static).
  """

  latency: jnp.ndarray
  distribution: str = flax.struct.field(pytree_node=False, default="deterministic")
  sigma: float = flax.struct.field(pytree_node=False, default=0.5)

  @property
  def num_clients(self) -> int:
    return int(self.latency.shape[0])

  def sample(self, key: jax.Array, clients: jnp.ndarray) -> jnp.ndarray:
    """Service times of one new task for each of `clients` ([D] -> [D] float32)."""
    mean = self.latency[clients]
    if self.distribution == "deterministic":
      return mean
    if self.distribution == "exponential":
      return mean * jax.random.exponential(key, mean.shape)
    if self.distribution == "lognormal":
      z = jax.random.normal(key, mean.shape)
      return mean * jnp.exp(self.sigma * z - 0.5 * self.sigma**2)
    raise ValueError(f"unknown distribution {self.distribution!r}")


@flax.struct.dataclass
class Schedule:
  """The whole event sequence of a run (T rounds, K arrivals per round).

  A leading seed axis may precede every field (vmapped schedules).

  Attributes:
    init_client: [D0] int32 clients dispatched with version 0.
    init_slot: [D0] int32 their payload slots.
    init_mask: [D0] bool which entries are real.
    arrival_client: [T, K] int32 clients aggregated in round t, FIFO order.
    arrival_slot: [T, K] int32 payload slots read in round t.
    arrival_version: [T, K] int32 versions those tasks were dispatched with.
    arrival_time: [T, K] float32 when each task reached the server.
    staleness: [T, K] int32 `t - arrival_version`, never negative.
    round_time: [T] float32 simulated time of aggregation t (non-decreasing).
    dispatch_client: [T, D] int32 clients dispatched with version t + 1.
    dispatch_slot: [T, D] int32 their payload slots.
    dispatch_mask: [T, D] bool which entries are real (D is a static capacity).
    overflow: [] bool a static capacity was too small; the schedule is invalid.
  """

  init_client: jnp.ndarray
  init_slot: jnp.ndarray
  init_mask: jnp.ndarray
  arrival_client: jnp.ndarray
  arrival_slot: jnp.ndarray
  arrival_version: jnp.ndarray
  arrival_time: jnp.ndarray
  staleness: jnp.ndarray
  round_time: jnp.ndarray
  dispatch_client: jnp.ndarray
  dispatch_slot: jnp.ndarray
  dispatch_mask: jnp.ndarray
  overflow: jnp.ndarray

  @property
  def num_rounds(self) -> int:
    return int(self.round_time.shape[-1])

  @property
  def buffer_size(self) -> int:
    return int(self.arrival_client.shape[-1])

  @property
  def num_slots(self) -> int:
    """The live-task bound: payload slots the training phase must allocate."""
    init = np.where(np.asarray(self.init_mask), np.asarray(self.init_slot), -1)
    disp = np.where(np.asarray(self.dispatch_mask), np.asarray(self.dispatch_slot), -1)
    return int(max(init.max(initial=-1), disp.max(initial=-1))) + 1

  def events(self) -> RoundEvents:
    """The per-round events of all rounds (the training scan's `xs`, sliced per chunk)."""
    return RoundEvents(
      arrival_slot=self.arrival_slot,
      arrival_client=self.arrival_client,
      staleness=self.staleness,
      dispatch_client=self.dispatch_client,
      dispatch_slot=self.dispatch_slot,
      dispatch_mask=self.dispatch_mask,
    )


class RoundEvents(NamedTuple):
  """What the training scan consumes per round (leading axis: rounds)."""

  arrival_slot: jnp.ndarray  # [T, K] int32
  arrival_client: jnp.ndarray  # [T, K] int32
  staleness: jnp.ndarray  # [T, K] int32
  dispatch_client: jnp.ndarray  # [T, D] int32
  dispatch_slot: jnp.ndarray  # [T, D] int32
  dispatch_mask: jnp.ndarray  # [T, D] bool


# ---------------------------------------------------------------------------
# Protocols. Each is a pure function of a PRNG key (vmappable over keys).


def _sync(key, time_model: TimeModel, num_rounds: int, clients_per_round: int) -> Schedule:
  n, m = time_model.num_clients, clients_per_round
  slots = jnp.arange(m, dtype=jnp.int32)

  def participants(k):
    if m == n:
      return jnp.arange(n, dtype=jnp.int32)
    return jax.random.permutation(k, n)[:m].astype(jnp.int32)

  def draw(r):
    k_pick, k_time = jax.random.split(jax.random.fold_in(key, r))
    clients = participants(k_pick)
    return clients, time_model.sample(k_time, clients)

  def step(carry, r):
    clock, clients, service = carry
    order = jnp.argsort(service, stable=True)  # FIFO: earliest arrival first
    arrivals = clients[order]
    arrival_time = clock + service[order]
    now = clock + jnp.max(service)
    next_clients, next_service = draw(r + 1)
    out = dict(
      arrival_client=arrivals,
      arrival_slot=slots[order],
      arrival_version=jnp.full((m,), r, jnp.int32),
      arrival_time=arrival_time,
      round_time=now,
      dispatch_client=next_clients,
      dispatch_slot=slots,
    )
    return (now, next_clients, next_service), out

  clients0, service0 = draw(0)
  init = (jnp.zeros((), jnp.float32), clients0, service0)
  _, out = jax.lax.scan(step, init, jnp.arange(num_rounds, dtype=jnp.int32))
  return _assemble(
    out,
    init_client=clients0,
    init_slot=slots,
    init_mask=jnp.ones((m,), bool),
    dispatch_mask=jnp.ones((num_rounds, m), bool),
    overflow=jnp.zeros((), bool),
  )


def _semi_async(key, time_model: TimeModel, num_rounds: int, buffer_size: int) -> Schedule:
  n, k = time_model.num_clients, buffer_size
  clients = jnp.arange(n, dtype=jnp.int32)

  def step(carry, r):
    finish, version = carry
    # The K earliest finishers, earliest first; ties go to the lower client index.
    _, arrivals = jax.lax.top_k(-finish, k)
    arrivals = arrivals.astype(jnp.int32)
    arrival_time = finish[arrivals]
    now = arrival_time[-1]
    service = time_model.sample(jax.random.fold_in(key, r + 1), arrivals)
    out = dict(
      arrival_client=arrivals,
      arrival_slot=arrivals,  # one task per client: slot = client
      arrival_version=version[arrivals],
      arrival_time=arrival_time,
      round_time=now,
      dispatch_client=arrivals,
      dispatch_slot=arrivals,
    )
    finish = finish.at[arrivals].set(now + service)
    version = version.at[arrivals].set(r + 1)
    return (finish, version), out

  finish0 = time_model.sample(jax.random.fold_in(key, 0), clients)
  init = (finish0, jnp.zeros((n,), jnp.int32))
  _, out = jax.lax.scan(step, init, jnp.arange(num_rounds, dtype=jnp.int32))
  return _assemble(
    out,
    init_client=clients,
    init_slot=clients,
    init_mask=jnp.ones((n,), bool),
    dispatch_mask=jnp.ones((num_rounds, k), bool),
    overflow=jnp.zeros((), bool),
  )


class _TickState(NamedTuple):
  counter: jnp.ndarray  # [N] ticks into the current task (0: idle, starts this tick)
  task_version: jnp.ndarray  # [N] version the client's current task started from
  task_slot: jnp.ndarray  # [N] payload slot of the client's current task
  buffer: jnp.ndarray  # [B, 4] FIFO uploads (client, version, slot, tick); entry e at row e % B
  head: jnp.ndarray  # [] first unaggregated buffer entry (a count, not wrapped)
  tail: jnp.ndarray  # [] one past the last buffer entry (a count, not wrapped)
  free: jnp.ndarray  # [S] LIFO stack of free slots; fresh slots pop in order 0, 1, ...
  top: jnp.ndarray  # [] number of entries on the free stack
  started: jnp.ndarray  # [D, 2] (client, slot) of the tasks started this round, index order
  num_started: jnp.ndarray  # []
  tick: jnp.ndarray  # [] current tick
  overflow: jnp.ndarray  # [] bool


def _tick(
  latency: jnp.ndarray, num_rounds: int, buffer_size: int, buffer_capacity: int
) -> Schedule:
  """The FedQS reference tick loop, vectorized over clients within a tick."""
  n, k = latency.shape[0], buffer_size
  latency = latency.astype(jnp.int32)
  cap_d = n + k  # starts per round are at most N + K - 1 (uploads of one tick + K - 1)
  cap_b = buffer_capacity
  cap_s = n + cap_b
  clients = jnp.arange(n, dtype=jnp.int32)

  def one_tick(s: _TickState, version):
    start = s.counter == 0
    upload = (~start) & (s.counter == latency)
    # Starts: pop one slot per starting client, in index order.
    rank = jnp.cumsum(start) - 1
    n_start = jnp.sum(start)
    new_slot = s.free[jnp.clip(s.top - 1 - rank, 0, cap_s - 1)]
    task_slot = jnp.where(start, new_slot, s.task_slot)
    task_version = jnp.where(start, version, s.task_version)
    pos = jnp.where(start, s.num_started + rank, cap_d)  # out of range -> dropped
    started = s.started.at[pos].set(jnp.stack([clients, new_slot], 1), mode="drop")
    # Uploads: append to the END of the buffer, in index order.
    up_rank = jnp.cumsum(upload) - 1
    n_up = jnp.sum(upload)
    bpos = jnp.where(upload, (s.tail + up_rank) % cap_b, cap_b)
    entries = jnp.stack([clients, task_version, task_slot, jnp.full((n,), s.tick)], 1)
    buffer = s.buffer.at[bpos].set(entries, mode="drop")
    counter = jnp.where(start, 1, jnp.where(upload, 0, s.counter + 1))
    overflow = (
      s.overflow
      | (n_start > s.top)
      | (s.num_started + n_start > cap_d)
      | (s.tail + n_up - s.head > cap_b)
    )
    return _TickState(
      counter,
      task_version,
      task_slot,
      buffer,
      s.head,
      s.tail + n_up,
      s.free,
      s.top - n_start,
      started,
      s.num_started + n_start,
      s.tick + 1,
      overflow,
    )

  def round_step(s: _TickState, r):
    """Ticks until the buffer holds K entries, then aggregates the first K."""
    s = s._replace(num_started=jnp.zeros((), jnp.int32))

    def cond(s):
      return (s.tail - s.head < k) & ~s.overflow

    # The aggregation happens at the end of a tick, so tick at least once.
    s = one_tick(s, r)
    s = jax.lax.while_loop(cond, lambda s: one_tick(s, r), s)
    taken = s.buffer[(s.head + jnp.arange(k)) % cap_b]
    arr_slot = taken[:, 2]
    out = dict(
      arrival_client=taken[:, 0],
      arrival_slot=arr_slot,
      arrival_version=taken[:, 1],
      arrival_time=taken[:, 3].astype(jnp.float32),
      round_time=(s.tick - 1).astype(jnp.float32),
      started_client=s.started[:, 0],
      started_slot=s.started[:, 1],
      started_mask=jnp.arange(cap_d) < s.num_started,
    )
    free = jax.lax.dynamic_update_slice(s.free, arr_slot, (s.top,))
    s = s._replace(head=s.head + k, free=free, top=s.top + k)
    return s, out

  init = _TickState(
    counter=jnp.zeros((n,), jnp.int32),
    task_version=jnp.zeros((n,), jnp.int32),
    task_slot=jnp.zeros((n,), jnp.int32),
    buffer=jnp.zeros((cap_b, 4), jnp.int32),
    head=jnp.zeros((), jnp.int32),
    tail=jnp.zeros((), jnp.int32),
    free=jnp.arange(cap_s - 1, -1, -1, dtype=jnp.int32),
    top=jnp.asarray(cap_s, jnp.int32),
    started=jnp.zeros((cap_d, 2), jnp.int32),
    num_started=jnp.zeros((), jnp.int32),
    tick=jnp.zeros((), jnp.int32),
    overflow=jnp.zeros((), bool),
  )
  final, out = jax.lax.scan(round_step, init, jnp.arange(num_rounds, dtype=jnp.int32))
  # Starts during round r carry version r: round 0's are the initial dispatch,
  # round r + 1's are the dispatch after aggregation r. The last round's
  # dispatch (version T) is never aggregated and is left empty.
  shift = lambda x, fill: jnp.concatenate([x[1:], jnp.full_like(x[:1], fill)], axis=0)  # noqa: E731
  return _assemble(
    out,
    init_client=out["started_client"][0],
    init_slot=out["started_slot"][0],
    init_mask=out["started_mask"][0],
    dispatch_client=shift(out.pop("started_client"), 0),
    dispatch_slot=shift(out.pop("started_slot"), 0),
    dispatch_mask=shift(out.pop("started_mask"), False),
    overflow=final.overflow,
  )


def _assemble(out: dict, **fields) -> Schedule:
  fields.update(out)
  rounds = jnp.arange(fields["arrival_version"].shape[0], dtype=jnp.int32)
  fields["staleness"] = rounds[:, None] - fields["arrival_version"]
  fields["arrival_time"] = fields["arrival_time"].astype(jnp.float32)
  fields["round_time"] = fields["round_time"].astype(jnp.float32)
  return Schedule(**fields)


def simulate(
  key: jax.Array,
  time_model: TimeModel,
  *,
  protocol: str,
  num_rounds: int,
  buffer_size: int = 1,
  clients_per_round: int | None = None,
  buffer_capacity: int | None = None,
) -> Schedule:
  """The raw schedule of one seed: pure, jittable and vmappable over `key`.

  Args:
    key: PRNG key of the schedule (service-time draws, client sampling).
    time_model: per-client latencies and their per-task distribution.
    protocol: one of `PROTOCOLS`.
    num_rounds: T, the number of aggregations.
    buffer_size: K, arrivals per aggregation (`semi_async`, `tick`; 1 for `async`).
    clients_per_round: M for `sync` (None: all N).
    buffer_capacity: `tick` only: static capacity of the upload buffer (entries
      waiting at once). Default: enough for any backlog (`build` picks a tighter one).

  Returns:
    A `Schedule` with static capacities; `finalize` checks and trims it.
  """
  n = time_model.num_clients
  if protocol == "sync":
    return _sync(key, time_model, num_rounds, clients_per_round or n)
  if protocol == "semi_async":
    return _semi_async(key, time_model, num_rounds, buffer_size)
  if protocol == "async":
    return _semi_async(key, time_model, num_rounds, 1)
  if protocol == "tick":
    del key  # the reference loop is deterministic
    if time_model.distribution != "deterministic":
      raise ValueError("the tick protocol needs deterministic integer latencies")
    cap = buffer_capacity or default_tick_capacity(n, buffer_size, num_rounds)
    return _tick(time_model.latency, num_rounds, buffer_size, cap)
  raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def default_tick_capacity(num_clients: int, buffer_size: int, num_rounds: int) -> int:
  """Upload-buffer entries that can wait at once in any tick loop (a safe bound).

  Uploads between two aggregations number at most N + K - 1, so at most
  T (N + K - 1) + N entries are ever uploaded.
  """
  return num_rounds * (num_clients + buffer_size) + num_clients


def estimated_tick_capacity(latency: np.ndarray, buffer_size: int, num_rounds: int) -> int:
  """A tight upload-buffer capacity from known integer latencies (host-side).

  Client i uploads once per latency_i + 1 ticks. If the uploads per tick exceed K,
  the backlog grows by about their excess per round (one round per tick); else it
  stays within a few rounds' bursts.
  """
  n = len(latency)
  rate = float(np.sum(1.0 / (np.asarray(latency, np.float64) + 1.0)))
  growth = max(rate - buffer_size, 0.0) * num_rounds
  return int(
    min(2 * (n + buffer_size) + 1.5 * growth, default_tick_capacity(n, buffer_size, num_rounds))
  )


def finalize(schedule: Schedule) -> Schedule:
  """Checks a (possibly seed-vmapped) raw schedule on the host and trims its capacities.

  The dispatch axis is cut to the largest number of dispatches in any round.
  Raises `RuntimeError` if a static capacity overflowed.
  """
  if bool(np.any(np.asarray(schedule.overflow))):
    raise RuntimeError("schedule capacity overflow: raise `buffer_capacity`")
  width = max(int(np.asarray(schedule.dispatch_mask).sum(-1).max(initial=0)), 1)
  width0 = max(int(np.asarray(schedule.init_mask).sum(-1).max(initial=0)), 1)
  return schedule.replace(
    init_client=schedule.init_client[..., :width0],
    init_slot=schedule.init_slot[..., :width0],
    init_mask=schedule.init_mask[..., :width0],
    dispatch_client=schedule.dispatch_client[..., :width],
    dispatch_slot=schedule.dispatch_slot[..., :width],
    dispatch_mask=schedule.dispatch_mask[..., :width],
  )


@functools.partial(
  jax.jit,
  static_argnames=(
    "protocol",
    "num_rounds",
    "buffer_size",
    "clients_per_round",
    "buffer_capacity",
  ),
)
def _simulate_seeds(keys, time_model, **kwargs):
  return jax.vmap(lambda key: simulate(key, time_model, **kwargs))(keys)


def build(
  keys: jax.Array,
  time_model: TimeModel,
  *,
  protocol: str,
  num_rounds: int,
  buffer_size: int = 1,
  clients_per_round: int | None = None,
  buffer_capacity: int | None = None,
) -> Schedule:
  """Jitted, seed-vmapped `simulate` + `finalize`: a [seeds, ...] schedule.

  `keys` is a batch of PRNG keys ([S] typed keys or [S, 2] raw keys).
  """
  chex.assert_rank(keys, {1, 2})
  kwargs = dict(protocol=protocol, num_rounds=num_rounds, buffer_size=buffer_size,
                clients_per_round=clients_per_round)  # fmt: skip
  if protocol == "tick" and buffer_capacity is None:
    latency = np.asarray(time_model.latency)
    capacity = estimated_tick_capacity(latency, buffer_size, num_rounds)
    raw = _simulate_seeds(keys, time_model, buffer_capacity=capacity, **kwargs)
    if not bool(np.any(np.asarray(raw.overflow))):
      return finalize(raw)
    buffer_capacity = default_tick_capacity(len(latency), buffer_size, num_rounds)
  return finalize(_simulate_seeds(keys, time_model, buffer_capacity=buffer_capacity, **kwargs))


def unbatch(schedule: Schedule, index: int) -> Schedule:
  """One seed of a seed-vmapped schedule (as host arrays)."""
  return jax.tree.map(lambda x: np.asarray(x)[index], schedule)


def summary(schedule: Schedule) -> dict:
  """Throughput and staleness statistics of one (unbatched) schedule."""
  staleness = np.asarray(schedule.staleness)
  round_time = np.asarray(schedule.round_time)
  total_time = float(round_time[-1]) if round_time.size else 0.0
  arrivals = staleness.size
  return {
    "num_rounds": schedule.num_rounds,
    "buffer_size": schedule.buffer_size,
    "num_slots": schedule.num_slots,
    "max_dispatch_per_round": int(np.asarray(schedule.dispatch_mask).sum(-1).max(initial=0)),
    "simulated_time": total_time,
    "arrivals_per_time": arrivals / total_time if total_time > 0 else float("inf"),
    "staleness_mean": float(staleness.mean()) if arrivals else 0.0,
    "staleness_max": int(staleness.max(initial=0)),
    "staleness_p50": float(np.percentile(staleness, 50)) if arrivals else 0.0,
    "staleness_p95": float(np.percentile(staleness, 95)) if arrivals else 0.0,
  }

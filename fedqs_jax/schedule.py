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
  queueing    asynchronous FL as a closed queueing network (spec/QUEUEING.md;
              Leconte et al., AISTATS 2024; Alahyane et al., ECAI 2025): C tasks
              circulate (the concurrency); each client is a single-server FIFO
              queue whose per-task service time is drawn from the `TimeModel`
              (`latency` = the mean service time 1 / mu_i; exponential service
              gives the product-form network of the closed forms in
              `fedqs_jax.queueing`). Initially C tasks with version 0 go to
              clients J ~ p (the routing probabilities), joining the queues in
              placement order. After K completions (K = 1 in the spec: every
              completion is one server update, so staleness `t - v` is the
              spec's relative delay D = k - v) the server aggregates them into
              version t + 1 and dispatches K new tasks, each to J ~ p, joining
              the back of J's queue at the time of the K-th completion. A
              client's next task starts when its previous one finishes. The
              event loop is O(1) per completion (linked-list queues) plus an
              argmin over the clients' head-of-queue finish times (blocked:
              O(sqrt N)); the C slots are reused LIFO (last freed first).

Time models (`TimeModel`): per-client mean latencies with a per-task
distribution: `deterministic` (the latency itself), `exponential` (mean =
latency) or `lognormal` (mean = latency, log-std `sigma`; `max_lognormal_sigma`
bounds it so that float32 service times neither underflow nor overflow).

Simulated time: a rebased clock. The clock is `epoch * delta + residual`: an
int32 epoch count and a float32 residual in [0, delta), where delta
(`epoch_length`) is a power of two 2^10 to 2^11 times the fastest mean latency.
After every event (queueing: every completion; semi_async and sync: every
round) the residual is reduced to [0, delta) and the event loop's times are
shifted by the same multiple of delta, which is exact in float32 (the shifted
times are >= the shift and their spacing is <= delta). So every comparison and
every `now + service` happens in numbers below delta + a service time, with the
same float32 precision at any run length: the precision a run shorter than delta
had before
(a float32 absolute clock, whose spacing at t ~ 2^19 is 1/16, reordered the
completions of clients with a mean service of 1/4). Runs shorter than delta
never rebase and are bit-identical to that float32 clock. `queueing` shifts
lazily to keep an event O(sqrt N): each block of finish times counts from the
epoch of its last update and is shifted when touched; the blocks' minima are
shifted for the argmin (O(B), like the argmin itself). The reported
`arrival_time` / `round_time` are the clock rounded once to float32 (correctly
rounded while epoch < 2^24; epoch >= 2^30 is reported as an overflow). `tick`
counts integer ticks (int32), exact as before.

Why not float64 (`jax.enable_x64` scoped to the schedule; x64 stays off
globally): the scoped flag is fragile under jit/vmap/scan (with JAX 0.10,
`jax.random` traced inside it fails on uint32 vs uint64 bits, so every draw
must move outside it and every dtype be pinned, or the draws change), and a
float64 clock is not bit-identical to the float32 one even for short runs
(float32 sums round differently), while the rebased clock is: existing
schedules, and the plain-Python references they are checked against, do not
change. Both are exact enough for any run length memory allows.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import NamedTuple

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from fedqs_jax import queueing
from fedqs_jax.errors import ConfigError, check

PROTOCOLS = ("sync", "semi_async", "async", "tick", "queueing")
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
      if not (math.isfinite(self.sigma) and self.sigma > 0):
        raise ValueError(f"lognormal sigma must be finite and > 0, got {self.sigma}")
      z = jax.random.normal(key, mean.shape)
      return mean * jnp.exp(self.sigma * z - 0.5 * self.sigma**2)
    raise ValueError(f"unknown distribution {self.distribution!r}")


LOGNORMAL_Z = 6.0  # |z| of the most extreme float32 standard normal draw, rounded up (5.4)


def max_lognormal_sigma(latency) -> float:
  """The largest `lognormal` sigma whose float32 service times stay normal numbers.

  A service time is `latency * f` with f = exp(sigma z - sigma^2 / 2), computed in float32
  (XLA flushes subnormal results to 0). For |z| <= `LOGNORMAL_Z` = Z, both f and latency * f
  must lie in float32's normal range [tiny, max]. The low end binds: sigma^2 / 2 + Z sigma
  <= L with L = -ln(tiny) + min(ln(min latency), 0), i.e. sigma <= sqrt(Z^2 + 2 L) - Z (8.51
  for latencies >= 1, less for faster ones). The high end (Z sigma - sigma^2 / 2, at most
  Z^2 / 2 = 18, must stay <= ln(max / max latency)) binds only for latencies above 5e30.
  The result is rounded down to 2 decimals (the range a message can state exactly).

  Args:
    latency: [N] mean service times (positive, finite).
  """
  latency = np.asarray(latency, np.float64)
  info = np.finfo(np.float32)
  z = LOGNORMAL_Z
  low = -np.log(float(info.tiny)) + min(np.log(latency.min()), 0.0)
  bound = np.sqrt(z * z + 2.0 * max(low, 0.0)) - z
  high = np.log(float(info.max)) - max(np.log(latency.max()), 0.0)
  if high < z * z / 2:
    bound = min(bound, z - np.sqrt(z * z - 2.0 * max(high, 0.0)))
  return math.floor(bound * 100) / 100


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
    arrival_time: [T, K] float32 when each task reached the server (the rebased clock
      rounded once; see "Simulated time" in the module docstring).
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
      arrival_version=self.arrival_version,
      staleness=self.staleness,
      dispatch_client=self.dispatch_client,
      dispatch_slot=self.dispatch_slot,
      dispatch_mask=self.dispatch_mask,
    )


class RoundEvents(NamedTuple):
  """What the training scan consumes per round (leading axis: rounds)."""

  arrival_slot: jnp.ndarray  # [T, K] int32
  arrival_client: jnp.ndarray  # [T, K] int32
  arrival_version: jnp.ndarray  # [T, K] int32 the versions the arriving tasks trained from
  staleness: jnp.ndarray  # [T, K] int32
  dispatch_client: jnp.ndarray  # [T, D] int32
  dispatch_slot: jnp.ndarray  # [T, D] int32
  dispatch_mask: jnp.ndarray  # [T, D] bool


# ---------------------------------------------------------------------------
# The clock (module docstring, "Simulated time"): time = epoch * delta + residual.

EPOCH_BITS = 10  # delta is 2^10 to 2^11 times the fastest mean latency
MAX_EPOCH = 2**30  # more epochs would overflow the int32 epoch counter: reported as overflow


def epoch_length(latency: jnp.ndarray) -> jnp.ndarray:
  """delta: the power of two the clock rebases by, 2^10 to 2^11 times the fastest latency.

  The scale is the fastest mean latency (the smallest positive one), but at least 2^-20
  times the slowest, so that every service time stays far below 2^24 delta (where the
  rebase would stop being exact). [N] float32 -> [] float32, traced.
  """
  latency = jnp.asarray(latency, jnp.float32)
  fastest = jnp.min(jnp.where(latency > 0, latency, jnp.inf))
  scale = jnp.maximum(fastest, jnp.max(latency) * 2.0**-20)
  scale = jnp.where(jnp.isfinite(scale) & (scale > 0), scale, 1.0)
  _, exponent = jnp.frexp(scale)  # scale < 2^exponent <= 2 scale
  return jnp.ldexp(jnp.float32(1.0), exponent + EPOCH_BITS)


def rebase(epoch, residual, delta):
  """The same time with the residual reduced to [0, delta): (epoch, residual, shift).

  `shift = residual - new residual` is a multiple of delta; subtracting it from any time
  t >= shift with t < 2^24 delta is exact in float32 (t's spacing is <= delta, and the
  difference is a smaller multiple of it). Non-finite residuals are left as they are.
  """
  q = jnp.where(jnp.isfinite(residual), jnp.floor(residual / delta), 0.0)
  shift = q * delta
  return epoch + q.astype(jnp.int32), residual - shift, shift


def absolute_time(epoch, residual, delta):
  """epoch * delta + residual rounded once to float32 (the `Schedule` time fields).

  Exact product while epoch < 2^24, so this is the clock correctly rounded; with epoch = 0
  it is the residual itself.
  """
  return epoch.astype(jnp.float32) * delta + residual


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

  delta = epoch_length(time_model.latency)

  def step(carry, r):
    epoch, clock, clients, service = carry  # the time of the last aggregation (rebased)
    order = jnp.argsort(service, stable=True)  # FIFO: earliest arrival first
    arrivals = clients[order]
    arrival_time = clock + service[order]
    now = clock + jnp.max(service)
    next_clients, next_service = draw(r + 1)
    out = dict(
      arrival_client=arrivals,
      arrival_slot=slots[order],
      arrival_version=jnp.full((m,), r, jnp.int32),
      arrival_time=absolute_time(epoch, arrival_time, delta),
      round_time=absolute_time(epoch, now, delta),
      dispatch_client=next_clients,
      dispatch_slot=slots,
    )
    epoch, now, _ = rebase(epoch, now, delta)
    return (epoch, now, next_clients, next_service), out

  clients0, service0 = draw(0)
  init = (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32), clients0, service0)
  final, out = jax.lax.scan(step, init, jnp.arange(num_rounds, dtype=jnp.int32))
  return _assemble(
    out,
    init_client=clients0,
    init_slot=slots,
    init_mask=jnp.ones((m,), bool),
    dispatch_mask=jnp.ones((num_rounds, m), bool),
    overflow=final[0] >= MAX_EPOCH,
  )


def _semi_async(key, time_model: TimeModel, num_rounds: int, buffer_size: int) -> Schedule:
  n, k = time_model.num_clients, buffer_size
  clients = jnp.arange(n, dtype=jnp.int32)

  delta = epoch_length(time_model.latency)

  def step(carry, r):
    epoch, finish, version = carry  # finish: rebased to `epoch` (all >= the last round's time)
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
      arrival_time=absolute_time(epoch, arrival_time, delta),
      round_time=absolute_time(epoch, now, delta),
      dispatch_client=arrivals,
      dispatch_slot=arrivals,
    )
    # Every unfinished task ends at or after `now`, so the shift is exact for all of them.
    epoch, now, shift = rebase(epoch, now, delta)
    finish = (finish - shift).at[arrivals].set(now + service)
    version = version.at[arrivals].set(r + 1)
    return (epoch, finish, version), out

  finish0 = time_model.sample(jax.random.fold_in(key, 0), clients)
  init = (jnp.zeros((), jnp.int32), finish0, jnp.zeros((n,), jnp.int32))
  final, out = jax.lax.scan(step, init, jnp.arange(num_rounds, dtype=jnp.int32))
  return _assemble(
    out,
    init_client=clients,
    init_slot=clients,
    init_mask=jnp.ones((n,), bool),
    dispatch_mask=jnp.ones((num_rounds, k), bool),
    overflow=final[0] >= MAX_EPOCH,
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


class _QueueState(NamedTuple):
  """The closed network between events. Clients are laid out in B blocks of W (B W >= N).

  Times are residuals of the rebased clock: row b of `finish` (and `block_min[b]`) counts
  from `block_epoch[b] * delta`, the epoch of the block's last update; the event loop counts
  from `epoch * delta` (the epoch of the last completion) and shifts a row to it when it
  touches the row.
  """

  finish: jnp.ndarray  # [B, W] float32 client b W + j's head-of-queue finish time (inf: idle)
  block_min: jnp.ndarray  # [B] float32 min of each block of `finish`
  block_arg: jnp.ndarray  # [B] int32 its first argmin within the block
  block_epoch: jnp.ndarray  # [B] int32 the epoch row b of `finish` counts from
  epoch: jnp.ndarray  # [] int32 the epoch of the last completion
  head: jnp.ndarray  # [N] int32 slot of the task in service at the client (-1: idle)
  tail: jnp.ndarray  # [N] int32 slot of the last task in the client's queue (-1: idle)
  next: jnp.ndarray  # [C] int32 slot of the task queued behind this one (-1: none)
  version: jnp.ndarray  # [C] int32 model version each task carries
  service: jnp.ndarray  # [C] float32 service time of each task (drawn at dispatch)
  overflow: jnp.ndarray  # [] bool a completion was due but no task was in service


def _block_shape(num_clients: int) -> tuple[int, int]:
  """(B, W): W = ceil(sqrt(N)) clients per block, B = ceil(N / W) blocks."""
  width = max(int(np.ceil(np.sqrt(num_clients))), 1)
  return -(-num_clients // width), width


def queueing_draws(
  key: jax.Array, time_model: TimeModel, cdf: jnp.ndarray, version, count: int
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The random draws of the `count` tasks dispatched with `version` (`queueing` protocol).

  Args:
    key: the schedule's PRNG key.
    time_model: service-time model.
    cdf: [N] cumulative routing probabilities, `cumsum(p)`.
    version: the version the tasks carry (0: the initial placement).
    count: the number of tasks (static).

  Returns:
    ([count] int32 clients J ~ p, [count] float32 their service times), in dispatch order.
  """
  k_route, k_service = jax.random.split(jax.random.fold_in(key, version))
  u = jax.random.uniform(k_route, (count,), cdf.dtype) * cdf[-1]
  clients = jnp.searchsorted(cdf, u, side="right").astype(jnp.int32)
  clients = jnp.minimum(clients, cdf.shape[0] - 1)
  return clients, time_model.sample(k_service, clients).astype(jnp.float32)


def _queueing(
  key, time_model: TimeModel, routing: jnp.ndarray, num_rounds: int, buffer_size: int,
  concurrency: int,
) -> Schedule:  # fmt: skip
  """The closed queueing network, one completion at a time (see the module docstring).

  The next completion is the argmin over the N head-of-queue finish times, ties to the
  lowest client. It is kept as a two-level (blocked) argmin: the clients' finish times in B
  blocks of W ~ sqrt(N), with each block's min and argmin; an event updates one or two
  clients' blocks, so it costs O(sqrt N) instead of O(N) (measured on XLA:CPU, N = 10,000:
  a flat argmin-and-update ~60 us per event, the blocked one ~8 us, 8 seeds vmapped).
  """
  n, k, c = time_model.num_clients, buffer_size, concurrency
  num_blocks, width = _block_shape(n)
  cdf = jnp.cumsum(jnp.asarray(routing, jnp.float32))
  delta = epoch_length(time_model.latency)

  # In-place updates: XLA updates an [N] or [C] array in place (instead of copying it, which
  # would make an event O(N)) only if every read of the array in the event is ordered before
  # its write by data dependence. So each write's index or value depends on the event's
  # reads of that array (see `after`, `join`'s tail and next). Checked in the compiled HLO
  # for a seed batch of 8; with a batch of one seed, XLA rewrites the scatters as
  # dynamic-update-slices and still copies `head` and `tail` (two [N] copies per event).

  def after(reads, x):
    """`x`, with a data dependence on `reads` (>= -1 by construction) that XLA cannot remove."""
    return jnp.where(jnp.min(reads) < -1, jnp.zeros_like(x), x)

  def current_row(s: _QueueState, b):
    """Row b of `finish` counted from `s.epoch` (exact: its finite times are >= that epoch)."""
    row_epoch = s.block_epoch[b]
    return s.finish[b] - (s.epoch - row_epoch).astype(jnp.float32) * delta, row_epoch

  def set_finish(s: _QueueState, b, j, row, value) -> _QueueState:
    """Client b W + j's head-of-queue finish time := `value` (`row` = `current_row(s, b)`)."""
    row, row_epoch = row
    row = row.at[j].set(value)
    return s._replace(
      finish=s.finish.at[b].set(row),
      block_min=s.block_min.at[b].set(jnp.min(row)),
      block_arg=s.block_arg.at[b].set(jnp.argmin(row).astype(jnp.int32)),
      block_epoch=s.block_epoch.at[b].set(after(row_epoch, s.epoch)),
    )

  def join(s: _QueueState, task, client, now):
    """Task `task` joins the back of `client`'s queue at time `now`; O(1) + one block."""
    b, j = client // width, client % width
    tail, head, row = s.tail[client], s.head[client], current_row(s, b)
    idle = tail < 0
    # next[tail] = task (dropped if idle), then next[task] = -1 (task != tail: it was free).
    nxt = s.next.at[jnp.where(idle, c, tail)].set(task, mode="drop").at[task].set(-1)
    s = set_finish(s, b, j, row, jnp.where(idle, now + s.service[task], row[0][j]))
    return s._replace(
      head=s.head.at[client].set(jnp.where(idle, task, head)),
      tail=s.tail.at[client].set(jnp.where(tail < -1, tail, task)),  # = task, after the read
      next=nxt,
    )

  def dispatch(s: _QueueState, slots, clients, service, version, now):
    """Tasks `slots` with `version` join `clients`' queues in order, at time `now`."""
    s = s._replace(
      version=s.version.at[slots].set(version), service=s.service.at[slots].set(service)
    )

    def body(s, x):
      return join(s, x[0], x[1], now), None

    return jax.lax.scan(body, s, (slots, clients))[0]

  def complete(s: _QueueState, _):
    """The next completion: the earliest head-of-queue task (ties: lowest client)."""
    # The blocks' minima counted from the current epoch: O(B), like the argmin.
    shift = (s.epoch - s.block_epoch).astype(jnp.float32) * delta
    keys = s.block_min - shift
    b = jnp.argmin(keys).astype(jnp.int32)  # first block holding the minimum
    j = s.block_arg[b]
    i = b * width + j
    now, task = keys[b], s.head[i]
    when = absolute_time(s.epoch, now, delta)  # what the schedule reports
    epoch, now, _ = rebase(s.epoch, now, delta)
    s = s._replace(epoch=epoch, overflow=s.overflow | ~jnp.isfinite(now) | (epoch >= MAX_EPOCH))
    behind = s.next[task]
    idle = behind < 0
    service = s.service[behind]
    s = set_finish(s, b, j, current_row(s, b), jnp.where(idle, jnp.inf, now + service))
    s = s._replace(
      head=s.head.at[i].set(behind),
      tail=s.tail.at[i].set(jnp.where(idle, -1, s.tail[i])),
    )
    return s, (i, task, s.version[task], when, now, service)

  def step(s: _QueueState, r):
    s, (clients, slots, versions, times, residuals, served) = jax.lax.scan(
      complete, s, None, length=k
    )
    now = residuals[-1]  # counted from s.epoch, the epoch of this last completion
    new_slots = slots[::-1]  # LIFO: the last freed slot is reused first
    new_clients, service = queueing_draws(key, time_model, cdf, r + 1, k)
    # The dispatch overwrites version and service entries the completions read.
    version = after(versions, jnp.full((k,), r + 1, jnp.int32))
    s = dispatch(s, new_slots, new_clients, after(served, service), version, now)
    out = dict(
      arrival_client=clients,
      arrival_slot=slots,
      arrival_version=versions,
      arrival_time=times,
      round_time=times[-1],
      dispatch_client=new_clients,
      dispatch_slot=new_slots,
    )
    return s, out

  init_slots = jnp.arange(c, dtype=jnp.int32)
  init_clients, init_service = queueing_draws(key, time_model, cdf, 0, c)
  s0 = _QueueState(
    finish=jnp.full((num_blocks, width), jnp.inf, jnp.float32),
    block_min=jnp.full((num_blocks,), jnp.inf, jnp.float32),
    block_arg=jnp.zeros((num_blocks,), jnp.int32),
    block_epoch=jnp.zeros((num_blocks,), jnp.int32),
    epoch=jnp.zeros((), jnp.int32),
    head=jnp.full((n,), -1, jnp.int32),
    tail=jnp.full((n,), -1, jnp.int32),
    next=jnp.full((c,), -1, jnp.int32),
    version=jnp.zeros((c,), jnp.int32),
    service=jnp.zeros((c,), jnp.float32),
    overflow=jnp.zeros((), bool),
  )
  s0 = dispatch(s0, init_slots, init_clients, init_service, 0, jnp.zeros((), jnp.float32))
  final, out = jax.lax.scan(step, s0, jnp.arange(num_rounds, dtype=jnp.int32))
  return _assemble(
    out,
    init_client=init_clients,
    init_slot=init_slots,
    init_mask=jnp.ones((c,), bool),
    dispatch_mask=jnp.ones((num_rounds, k), bool),
    overflow=final.overflow,
  )


def queueing_parameters(routing, concurrency: int, num_clients: int) -> tuple[np.ndarray, int]:
  """The routing probabilities p and the concurrency C of a `queueing` run, validated.

  Args:
    routing: `config.schedule.routing`: None or "" (uniform, p_i = 1 / N); a sequence or a
      comma-separated string of N probabilities; or the path of a JSON file with keys
      "routing" (N probabilities) and "concurrency" (C), as `experiments.queueing --out`
      writes it.
    concurrency: `config.schedule.concurrency`: C >= 1, or 0 for the file's C if `routing`
      is a file that has one, else C = N (plain AsyncSGD: every client busy on average).
    num_clients: N.

  Returns:
    ([N] float64 p, renormalised to sum to exactly 1, int C).

  Raises:
    ConfigError: p is not N non-negative numbers summing to 1 (within
      `queueing.sum_tolerance(N)`, the float32 rounding of N probabilities), or C < 1.
  """
  field = "schedule.routing"
  file_concurrency = None
  if isinstance(routing, str) and (
    routing.strip().lower().endswith(".json") or os.path.isfile(routing.strip())
  ):
    path = routing.strip()
    check(os.path.isfile(path), field, routing, "must be an existing JSON file")
    try:
      with open(path) as f:
        content = json.load(f)
    except (OSError, ValueError) as e:
      raise ConfigError(f"{field}={routing!r} is invalid: not readable JSON ({e})") from None
    check(isinstance(content, dict) and "routing" in content, field, routing,
          'the JSON file must hold an object with a key "routing" (and "concurrency")')  # fmt: skip
    routing, file_concurrency = content["routing"], content.get("concurrency")
  if routing is None or (isinstance(routing, str) and not routing.strip()):
    p = np.full((num_clients,), 1.0 / num_clients)
  else:
    if isinstance(routing, str):
      routing = [x for x in routing.replace("(", "").replace(")", "").split(",") if x.strip()]
    try:
      p = np.asarray(routing, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
      raise ConfigError(
        f"{field}={routing!r} is invalid: must be N numbers (comma-separated), a JSON file "
        "or '' (uniform)"
      ) from None
  check(p.shape == (num_clients,), field, routing,
        f"must hold data.num_clients={num_clients} probabilities, found {p.size}")  # fmt: skip
  check(bool(np.all(np.isfinite(p)) and np.all(p >= 0)), field, p.min(initial=0.0),
        "probabilities must be finite and >= 0")  # fmt: skip
  tol = queueing.sum_tolerance(num_clients)
  check(abs(p.sum() - 1.0) <= tol, field, float(p.sum()),
        f"probabilities must sum to 1 (within {tol:.2g}; the sum is shown)")  # fmt: skip
  if concurrency == 0 and file_concurrency is not None:
    concurrency, cfield = file_concurrency, f"concurrency in {field}"
  else:
    cfield = "schedule.concurrency"
  check(isinstance(concurrency, (int, np.integer)) and not isinstance(concurrency, bool)
        and concurrency >= 0, cfield, concurrency,
        "must be an integer >= 1 (0: data.num_clients)")  # fmt: skip
  return p / p.sum(), int(concurrency) or num_clients


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
  concurrency: int | None = None,
  routing: jnp.ndarray | None = None,
) -> Schedule:
  """The raw schedule of one seed: pure, jittable and vmappable over `key`.

  Args:
    key: PRNG key of the schedule (service-time draws, client sampling).
    time_model: per-client latencies and their per-task distribution.
    protocol: one of `PROTOCOLS`.
    num_rounds: T, the number of aggregations.
    buffer_size: K, arrivals per aggregation (`semi_async`, `tick`, `queueing`; 1 for
      `async`).
    clients_per_round: M for `sync` (None: all N).
    buffer_capacity: `tick` only: static capacity of the upload buffer (entries
      waiting at once). Default: enough for any backlog (`build` picks a tighter one).
    concurrency: `queueing` only: C >= K tasks in circulation (static; None: N).
    routing: `queueing` only: [N] routing probabilities p (traced; None: uniform).

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
  if protocol == "queueing":
    concurrency = concurrency or n
    if not 1 <= buffer_size <= concurrency:
      raise ValueError(
        f"queueing needs 1 <= buffer_size={buffer_size} <= concurrency={concurrency}"
      )
    routing = jnp.full((n,), 1.0 / n) if routing is None else routing
    chex.assert_shape(routing, (n,))
    return _queueing(key, time_model, routing, num_rounds, buffer_size, concurrency)
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
    raise RuntimeError(
      "schedule capacity overflow: raise `buffer_capacity` (tick), or the simulated time "
      "passed 2^30 clock epochs (sync, semi_async, queueing)"
    )
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
    "concurrency",
  ),
)
def _simulate_seeds(keys, time_model, routing=None, **kwargs):
  return jax.vmap(lambda key: simulate(key, time_model, routing=routing, **kwargs))(keys)


def build(
  keys: jax.Array,
  time_model: TimeModel,
  *,
  protocol: str,
  num_rounds: int,
  buffer_size: int = 1,
  clients_per_round: int | None = None,
  buffer_capacity: int | None = None,
  concurrency: int | None = None,
  routing: jnp.ndarray | None = None,
) -> Schedule:
  """Jitted, seed-vmapped `simulate` + `finalize`: a [seeds, ...] schedule.

  `keys` is a batch of PRNG keys ([S] typed keys or [S, 2] raw keys). `routing` (the
  `queueing` protocol's [N] probabilities) is traced: changing it does not recompile.
  """
  chex.assert_rank(keys, {1, 2})
  kwargs = dict(protocol=protocol, num_rounds=num_rounds, buffer_size=buffer_size,
                clients_per_round=clients_per_round)  # fmt: skip
  if protocol == "queueing":
    n = time_model.num_clients
    routing = np.full((n,), 1.0 / n) if routing is None else routing
    kwargs.update(concurrency=concurrency or n, routing=jnp.asarray(routing, jnp.float32))
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

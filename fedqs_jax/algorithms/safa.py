"""SAFA (Wu, Wang, Li, Xu, Jarvis, IEEE Trans. Computers 2020): a cache of every
client's latest model, with lag-tolerant resets.

The server caches one model per client, cache_c (initially w^0). For the K arrivals of
round t (0-based), each a local model x_i, in FIFO order:

  1. picked: the first arrival of each client replaces its entry, cache_c <- x_i;
  2. lag tolerance: a client whose entry is more than `lag_tolerance` rounds old (its
     last arrival, or its last reset, before round t - lag_tolerance) is reset to the
     current global model, cache_c <- w^t: SAFA's forced synchronisation of a
     deprecated client, after which its lag counts from round t again;
  3. w^(t+1) = sum_{c=1..N} (n_c / sum_j n_j) cache_c;
  4. bypassed: a client's later arrivals of the round (duplicates, possible under
     `tick` and `queueing`) are written to its entry after the aggregation (the last
     one stays).

With `lag_reset=False` there is no lag tolerance (no resets). Only the server side of
SAFA is modelled: a reset client is not interrupted (its task in flight still arrives
and is picked), and every task trains from the broadcast global model.

Cost. Steps 2 and 3 are O(N P) as written; this module does them exactly in O((K + C)
P) per round, whatever N. Reset entries are never written to the [N, *params] cache: a
client reset at round r holds w^r and, unless it arrives first, is reset again at
r + C, C = lag_tolerance + 1. So the clients reset at rounds of one phase r mod C form
a cohort, reset as a whole: C cohort entries [C, *params] and their members' total
sizes [C]. The module keeps the running sum S = sum of n_c cache_c over the clients
with a cached row, updated by the rows that change, and per round

  (i)   reads the K arriving clients' old rows, S += n_c (x - row) (a reset client
        leaves its cohort's size instead, a client not seen yet the unseen group);
  (ii)  resets the cohort of phase t mod C to w^t, and moves into it the clients whose
        last arrival was round t - C, at most K (their rows leave S; found from the
        [N] last-arrival rounds, O(N) integers);
  (iii) w = (S + sum_p size_p cohort_p + unseen size x unseen entry) / sum n  (O(C P));
  (iv)  writes the K arriving clients' rows (each client's last arrival), in place.

At most 2K rows of the cache are read and K written per round. The clients not seen
yet are one more group (w^0, or the global model of their last common reset).
`lag_tolerance` is static (it sets C). Float32 rounding in S accumulates like in any
running sum. Measured on CPU (P = 50,000, K = 10, in a jitted scan): ~1 ms per round
for N = 100, 1,000 and 10,000, while one O(N P) weighted sum over the cache takes
0.6, 8 and 40 ms.

Data sizes. The weights need every client's n_c, which the algorithm contract does
not provide (`BuildContext` has no data sizes; `Arrivals` carries the arriving
clients'). `safa(num_examples=...)` uses them when given; otherwise a client's n_c is
learned at its first arrival and the clients not seen yet are weighted by their
number times the mean size of the clients seen. Once every client has arrived, the
weights are exact.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedqs_jax.algorithms import base


class SAFAState(NamedTuple):
  cache: base.Params  # [N, *params] the entries of the clients seen and not reset since
  cohort: base.Params  # [C, *params] the entry of the clients reset at rounds of phase p
  cohort_size: jnp.ndarray  # [C] float32 the total size n of each cohort's members
  total: base.Params  # [*params] S = sum of n_c cache_c over the clients with a cached row
  unseen: base.Params  # [*params] the common entry of the clients not seen yet
  size: jnp.ndarray  # [N] float32 n_c (0 until seen, unless the sizes were given)
  seen: jnp.ndarray  # [N] bool the client has arrived at least once
  reset: jnp.ndarray  # [N] bool the client is in a cohort (reset since its last arrival)
  last: jnp.ndarray  # [N] int32 its last arrival, or the round it joined its cohort
  unseen_last: jnp.ndarray  # [] int32 the last reset of the clients not seen yet
  round: jnp.ndarray  # [] int32 t


def _read(tree: base.Params, index: jnp.ndarray) -> base.Params:
  return jax.tree.map(lambda x: x[index], tree)


def _write_after(
  tree: base.Params, index: jnp.ndarray, rows: base.Params, reads: tuple, n: int
) -> base.Params:
  """tree[index] = rows (out-of-range indices dropped), after the `reads` of `tree`.

  XLA updates a buffer in place only if it can order every read of the old buffer
  before the write; otherwise it copies the whole buffer ([N, *params]: twice per
  round on XLA:CPU). So the written index depends on the reads: it is never out of
  range in fact (a number is not both NaN and infinite), but XLA cannot prove so.
  """

  def one(x, r, *read):
    d = sum(v.ravel()[0] for v in read)
    i = jnp.where(jnp.isnan(d) & jnp.isinf(d), n, index)
    return x.at[i].set(r, mode="drop")

  return jax.tree.map(one, tree, rows, *reads)


def _axpy(total: base.Params, a: jnp.ndarray, x: base.Params) -> base.Params:
  """total + a x for a scalar a."""
  return jax.tree.map(lambda t, v: t + a.astype(v.dtype) * v, total, x)


def _weighted_add(total: base.Params, weights: jnp.ndarray, rows: base.Params) -> base.Params:
  """total + sum_i weights[i] rows[i]."""
  return jax.tree.map(jnp.add, total, base.weighted_sum(weights, rows))


def safa(
  num_examples: np.ndarray | None = None, lag_tolerance: int = 10, lag_reset: bool = True
) -> base.Algorithm:
  """SAFA.

  Args:
    num_examples: [N] the clients' data sizes (None: learned at first arrival).
    lag_tolerance: an entry older than this many rounds is reset (static: C = it + 1
      cohort entries are kept).
    lag_reset: False: no lag tolerance, entries are never reset.
  """
  sizes = None if num_examples is None else jnp.asarray(num_examples, jnp.float32)
  c_slots = int(lag_tolerance) + 1 if lag_reset else 0

  def init(params, num_clients, hparams):
    del hparams
    n = num_clients

    def repeat(rows):
      return jax.tree.map(lambda x: jnp.broadcast_to(x, (rows, *x.shape)), params)

    zero = jnp.zeros((), jnp.int32)
    state = SAFAState(
      cache=repeat(n),
      cohort=repeat(c_slots),
      cohort_size=jnp.zeros((c_slots,), jnp.float32),
      total=jax.tree.map(jnp.zeros_like, params),
      unseen=params,
      size=jnp.zeros((n,), jnp.float32) if sizes is None else sizes[:n],
      seen=jnp.zeros((n,), bool),
      reset=jnp.zeros((n,), bool),
      last=jnp.zeros((n,), jnp.int32),
      unseen_last=zero,
      round=zero,
    )
    return state, ()

  def aggregate(s: SAFAState, params, arrivals: base.Arrivals, hparams):
    del hparams
    n_clients = s.seen.shape[0]
    k = arrivals.client.shape[0]
    t = s.round
    mask, client, x = arrivals.mask, arrivals.client, arrivals.payload
    same = (client[:, None] == client[None, :]) & mask[:, None] & mask[None, :]
    earlier = jnp.tril(same, -1).any(axis=1)  # an earlier arrival of the same client
    later = jnp.triu(same, 1).any(axis=1)
    picked = mask & ~earlier
    bypassed = mask & earlier & ~later  # a client's last duplicate of the round

    # 1. Picked arrivals replace their entries: S += n_c x, and the old entry leaves
    # S (a cached row) or its cohort's size (a reset client) or the unseen group.
    n_pick = jnp.where(picked, arrivals.num_examples, 0.0)
    n_row = jnp.where(s.seen[client] & ~s.reset[client], n_pick, 0.0)
    reads = (_read(s.cache, client),)
    total = _weighted_add(s.total, n_pick, x)
    total = _weighted_add(total, -n_row, reads[0])
    pick_index = jnp.where(picked, client, n_clients)
    size = s.size.at[pick_index].set(arrivals.num_examples, mode="drop")
    seen = s.seen.at[pick_index].set(True, mode="drop")
    reset = s.reset.at[pick_index].set(False, mode="drop")
    last = s.last.at[pick_index].set(t, mode="drop")
    cohort, cohort_size = s.cohort, s.cohort_size
    unseen, unseen_last = s.unseen, s.unseen_last
    num_reset = jnp.zeros((), jnp.int32)
    if c_slots:
      cohort_size = cohort_size.at[s.last[client] % c_slots].add(
        -jnp.where(s.reset[client], n_pick, 0.0)
      )

      # 2. Lag resets to w^t: the cohort of phase t mod C, joined by the clients whose
      # last arrival was round t - C (at most K; not arriving now: their rows are read
      # before the cache is written) whose rows leave S.
      p = t % c_slots
      members = reset & (last % c_slots == p)
      joining = seen & ~reset & (last == t - c_slots)
      join = jnp.nonzero(joining, size=k, fill_value=n_clients)[0]
      valid = join < n_clients
      join = jnp.minimum(join, n_clients - 1)
      n_join = jnp.where(valid, size[join], 0.0)
      reads += (_read(s.cache, join),)
      total = _weighted_add(total, -n_join, reads[1])
      slot = jnp.arange(c_slots) == p  # O(C P), like the weighted sum of the cohorts below
      cohort = jax.tree.map(
        lambda c, w: jnp.where(slot.reshape((-1,) + (1,) * w.ndim), w[None], c), cohort, params
      )
      cohort_size = cohort_size.at[p].add(jnp.sum(n_join))
      join_index = jnp.where(valid, join, n_clients)
      reset = reset.at[join_index].set(True, mode="drop")
      last = last.at[join_index].set(t, mode="drop")
      num_reset = jnp.sum(members) + jnp.sum(valid)
      unseen_reset = t - unseen_last >= c_slots
      unseen = base.tree_where(unseen_reset, params, unseen)
      unseen_last = jnp.where(unseen_reset, t, unseen_last)

    # 3. w = (S + sum_p size_p cohort_p + unseen size x unseen entry) / sum of all n_c.
    num_seen = jnp.sum(seen)
    seen_size = jnp.sum(jnp.where(seen, size, 0.0))
    if sizes is None:  # the mean size of the clients seen
      unseen_size = (n_clients - num_seen) * seen_size / jnp.maximum(num_seen, 1)
    else:
      unseen_size = jnp.sum(jnp.where(seen, 0.0, size))
    weight = seen_size + unseen_size
    inv = jnp.where(weight > 0, 1.0 / jnp.where(weight > 0, weight, 1.0), 0.0)
    entries = _axpy(total, unseen_size, unseen)
    if c_slots:
      entries = _weighted_add(entries, cohort_size, cohort)
    mixed = jax.tree.map(lambda e: e * inv.astype(e.dtype), entries)
    new = base.tree_where(weight > 0, mixed, params)

    # 4. Bypassed arrivals replace the picked one of their client after the aggregation:
    # S += n_c (x_last - x_first). The cache gets each arriving client's last arrival.
    n_bypass = jnp.where(bypassed, arrivals.num_examples, 0.0)
    first = jnp.argmax(same, axis=1)  # the client's first arrival of the round
    total = _weighted_add(total, n_bypass, x)
    total = _weighted_add(total, -n_bypass, _read(x, first))
    last_arrival = jnp.where(mask & ~later, client, n_clients)
    cache = _write_after(s.cache, last_arrival, x, reads, n_clients)

    state = SAFAState(cache, cohort, cohort_size, total, unseen, size, seen, reset, last,
                      unseen_last, t + 1)  # fmt: skip
    metrics = {
      "bypassed": jnp.sum((mask & earlier).astype(jnp.float32)),
      "lag_resets": num_reset.astype(jnp.float32),
    }
    return new, state, metrics

  return base.Algorithm(
    name="safa",
    init=init,
    client_begin=base.default_begin,
    client_end=base.upload_model,
    aggregate=aggregate,
  )


SPECS = (
  base.AlgorithmSpec(
    name="safa",
    section="safa",
    # BuildContext has no data sizes today: SAFA learns them (see the module docstring).
    build=lambda c, ctx: safa(ctx.num_examples, int(c.lag_tolerance), bool(c.lag_reset)),
    options={"lag_tolerance": (10, base.Range(0, math.inf)), "lag_reset": (True, None)},
    doc="SAFA: a cache of every client's latest model, lag-tolerant resets, weighted mean",
  ),
)

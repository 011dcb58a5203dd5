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

Cost. Steps 2 and 3 are O(N P) as written; this module does them in O(K P) per round,
exactly. It keeps the running sum S = sum_c n_c cache_c ([*params]), updated by the
entries that change (an entry going from a to b adds n_c (b - a)); w = S / sum n. Reset
entries are never written to the [N, *params] cache: a client reset at round r holds
w^r, and it is reset again at r + C, C = lag_tolerance + 1, unless it arrives first.
So the clients reset at rounds of the same phase r mod C form one cohort that is reset
as a whole: C cohort entries [C, *params] with their members' total size. A round
(i) reads the K arrivals' old entries and writes their rows; (ii) resets the cohort of
phase t mod C in O(P) (S += its size (w^t - its entry)); (iii) moves into that cohort
the clients whose last arrival was round t - C exactly, at most K of them (reading
their rows; found from the [N] last-arrival rounds, O(N) integers); (iv) writes the
bypassed rows. So at most 2K rows and two [*params] entries per round, whatever N:
the clients not seen yet are one more cohort (step 3 needs no row of theirs either).
Memory: the cache, plus C [*params] cohort entries; `lag_tolerance` is static (it
sets C). Float32 rounding in S accumulates like in any running sum.

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
  total: base.Params  # [*params] S = sum over the clients seen of n_c entry_c
  unseen: base.Params  # [*params] the common entry of the clients not seen yet
  size: jnp.ndarray  # [N] float32 n_c (0 until seen, unless the sizes were given)
  seen: jnp.ndarray  # [N] bool the client has arrived at least once
  reset: jnp.ndarray  # [N] bool the client is in a cohort (reset since its last arrival)
  last: jnp.ndarray  # [N] int32 its last arrival, or the round it joined its cohort
  unseen_last: jnp.ndarray  # [] int32 the last reset of the clients not seen yet
  round: jnp.ndarray  # [] int32 t


def _rows(tree: base.Params, index: jnp.ndarray) -> base.Params:
  return jax.tree.map(lambda x: x[index], tree)


def _set_rows(tree: base.Params, index: jnp.ndarray, rows: base.Params) -> base.Params:
  """tree[index] = rows, dropping out-of-range indices (masked entries point past N)."""
  return jax.tree.map(lambda x, r: x.at[index].set(r, mode="drop"), tree, rows)


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
    size, seen, reset, last = s.size, s.seen, s.reset, s.last
    cohort, cohort_size = s.cohort, s.cohort_size

    # 1. Picked arrivals replace their entries: S += n_c (x - old entry), 0 if unseen.
    n_pick = jnp.where(picked, arrivals.num_examples, 0.0)
    n_row = jnp.where(seen[client] & ~reset[client], n_pick, 0.0)
    total = _weighted_add(s.total, n_pick, x)
    total = _weighted_add(total, -n_row, _rows(s.cache, client))
    if c_slots:  # the picked members of cohorts leave them
      phase = last[client] % c_slots
      n_cohort = jnp.where(reset[client], n_pick, 0.0)
      total = _weighted_add(total, -n_cohort, _rows(cohort, phase))
      cohort_size = cohort_size.at[phase].add(-n_cohort)
    pick_index = jnp.where(picked, client, n_clients)
    cache = _set_rows(s.cache, pick_index, x)
    size = size.at[pick_index].set(arrivals.num_examples, mode="drop")
    seen = seen.at[pick_index].set(True, mode="drop")
    reset = reset.at[pick_index].set(False, mode="drop")
    last = last.at[pick_index].set(t, mode="drop")

    # 2. Lag resets to w^t: the cohort of phase t mod C, and the clients whose last
    # arrival was round t - C (at most K) join it.
    unseen, unseen_last = s.unseen, s.unseen_last
    num_reset = jnp.zeros((), jnp.int32)
    if c_slots:
      p = t % c_slots
      members = reset & (last % c_slots == p)
      total = _axpy(total, cohort_size[p], params)
      total = _axpy(total, -cohort_size[p], _rows(cohort, p))
      joining = seen & ~reset & (last == t - c_slots)
      index = jnp.nonzero(joining, size=k, fill_value=n_clients)[0]
      valid = index < n_clients
      n_join = jnp.where(valid, size[jnp.minimum(index, n_clients - 1)], 0.0)
      total = _axpy(total, jnp.sum(n_join), params)
      total = _weighted_add(total, -n_join, _rows(cache, jnp.minimum(index, n_clients - 1)))
      cohort = jax.tree.map(lambda c, w: c.at[p].set(w), cohort, params)
      cohort_size = cohort_size.at[p].add(jnp.sum(n_join))
      reset = reset.at[index].set(True, mode="drop")
      last = last.at[index].set(t, mode="drop")
      num_reset = jnp.sum(members) + jnp.sum(valid)
      unseen_reset = t - unseen_last >= c_slots
      unseen = base.tree_where(unseen_reset, params, unseen)
      unseen_last = jnp.where(unseen_reset, t, unseen_last)

    # 3. w = (S + unseen size x unseen entry) / sum of all n_c.
    num_seen = jnp.sum(seen)
    seen_size = jnp.sum(jnp.where(seen, size, 0.0))
    if sizes is None:  # the mean size of the clients seen
      unseen_size = (n_clients - num_seen) * seen_size / jnp.maximum(num_seen, 1)
    else:
      unseen_size = jnp.sum(jnp.where(seen, 0.0, size))
    weight = seen_size + unseen_size
    inv = jnp.where(weight > 0, 1.0 / jnp.where(weight > 0, weight, 1.0), 0.0)
    mixed = jax.tree.map(
      lambda tot, u: (tot + unseen_size.astype(u.dtype) * u) * inv.astype(u.dtype), total, unseen
    )
    new = base.tree_where(weight > 0, mixed, params)

    # 4. Bypassed arrivals (a client's last duplicate of the round) enter the cache now.
    bypassed = mask & earlier & ~later
    n_bypass = jnp.where(bypassed, arrivals.num_examples, 0.0)
    total = _weighted_add(total, n_bypass, x)
    total = _weighted_add(total, -n_bypass, _rows(cache, client))
    cache = _set_rows(cache, jnp.where(bypassed, client, n_clients), x)

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
    build=lambda c, ctx: safa(
      getattr(ctx, "num_examples", None), int(c.lag_tolerance), bool(c.lag_reset)
    ),
    options={"lag_tolerance": (10, base.Range(0, math.inf)), "lag_reset": (True, None)},
    doc="SAFA: a cache of every client's latest model, lag-tolerant resets, weighted mean",
  ),
)

"""FedAT (Chai, Chen, Zhao, Rangwala, Cheng, SC 2021): tiered federated learning with
cross-tier weighting that favours the slow tiers.

Tiers. At build time the clients are split by speed into `num_tiers` quantile tiers
of their mean latencies (`BuildContext.latency`, the time model's; never measured in
training): tier(i) = floor(T r_i / N) with r_i the number of clients strictly faster
than i, so the fastest clients are in tier 0 and equally fast clients share a tier.
Empty tiers (ties, or N < T) are dropped and the others renumbered 0..T'-1 in speed
order.

Each round, with the K arrivals S (local models x_i):

  tier models   m_j <- sum_{i in S_j} (n_i / sum_{l in S_j} n_l) x_i for every tier j
                with arrivals this round (S_j = its arrivals; unchanged otherwise, and
                if its arrivals are all empty);
  update counts u_j += |S_j|;
  global model  w <- sum_j omega_j m_j,   omega_j proportional to u_(T'-1-j) over the
                tiers that have a model (u_j > 0), normalised:

tier j is weighted by the update share of its mirror tier T'-1-j, so the slowest tier
gets the share of the fastest (FedAT's cross-tier aggregation). If no such weight is
positive (the mirror tiers have not reported yet), the round falls back to the
warm-up rule. Warm-up: in the first `warmup_rounds` rounds (default 30) the global
model is plain SAFL FedAvg over the arrivals, w <- sum_{i in S} (n_i / sum n) x_i;
tier models and counts are kept up to date meanwhile. With every arrival empty the
global model is kept.

Only FedAT's aggregation is modelled (no intra-tier synchronous rounds, no proximal
term or compression): every task trains from the broadcast global model.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedqs_jax.algorithms import base


class FedATState(NamedTuple):
  tier_model: base.Params  # [T', *params] m_j
  updates: jnp.ndarray  # [T'] float32 u_j, updates received per tier
  round: jnp.ndarray  # [] int32 t


def tiers(latency: np.ndarray, num_tiers: int) -> np.ndarray:
  """[N] int32 tier of each client: quantile tiers of `latency`, fastest 0, empty ones
  dropped (so the tiers are 0..T'-1, T' <= num_tiers)."""
  latency = np.asarray(latency, np.float64)
  n = latency.shape[0]
  faster = np.searchsorted(np.sort(latency), latency, side="left")  # clients strictly faster
  raw = np.minimum(num_tiers * faster // max(n, 1), num_tiers - 1)
  _, dense = np.unique(raw, return_inverse=True)
  return dense.astype(np.int32)


def mirrored_weights(updates: jnp.ndarray) -> jnp.ndarray:
  """omega [T']: u_(T'-1-j) over the tiers with a model (u_j > 0), normalised (0 if none)."""
  omega = jnp.where(updates > 0, updates[::-1], 0.0)
  total = jnp.sum(omega)
  return jnp.where(total > 0, omega / jnp.where(total > 0, total, 1.0), 0.0)


def fedat(tier_of: np.ndarray) -> base.Algorithm:
  """FedAT with the clients' tiers `tier_of` ([N] int, 0..T'-1, see `tiers`)."""
  tier_of = jnp.asarray(tier_of, jnp.int32)
  num_tiers = int(np.max(np.asarray(tier_of))) + 1

  def init(params, num_clients, hparams):
    del num_clients, hparams
    models = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_tiers, *x.shape)), params)
    return FedATState(models, jnp.zeros((num_tiers,), jnp.float32), jnp.zeros((), jnp.int32)), ()

  def aggregate(s: FedATState, params, arrivals: base.Arrivals, hparams):
    mask = arrivals.mask
    member = (tier_of[arrivals.client][None, :] == jnp.arange(num_tiers)[:, None]) & mask
    n = jnp.where(member, arrivals.num_examples, 0.0)  # [T', K]
    tier_size = jnp.sum(n, axis=1)
    per_tier = n / jnp.where(tier_size > 0, tier_size, 1.0)[:, None]
    averaged = jax.tree.map(
      lambda x: jnp.tensordot(per_tier.astype(x.dtype), x, 1), arrivals.payload
    )
    tier_model = jax.tree.map(
      lambda new, old: jnp.where((tier_size > 0).reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
      averaged,
      s.tier_model,
    )
    updates = s.updates + jnp.sum(member, axis=1).astype(jnp.float32)

    omega = mirrored_weights(updates)
    tiered = base.weighted_sum(omega, tier_model)
    n_all = jnp.where(mask, arrivals.num_examples, 0.0)
    fedavg = base.weighted_sum(base.data_size_weights(n_all), arrivals.payload)
    warm = (s.round < hparams["warmup_rounds"]) | (jnp.sum(omega) == 0)
    new = base.tree_where(warm, fedavg, tiered)
    new = base.tree_where(warm & (jnp.sum(n_all) == 0), params, new)
    metrics = {"warm_up": warm.astype(jnp.float32), "slowest_tier_weight": omega[-1]}
    return new, FedATState(tier_model, updates, s.round + 1), metrics

  return base.Algorithm(
    name="fedat",
    init=init,
    client_begin=base.default_begin,
    client_end=base.upload_model,
    aggregate=aggregate,
  )


SPECS = (
  base.AlgorithmSpec(
    name="fedat",
    section="fedat",
    build=lambda c, ctx: fedat(tiers(ctx.latency, int(c.num_tiers))),
    hparams={"warmup_rounds": (30.0, base.NON_NEGATIVE)},
    options={"num_tiers": (5, base.Range(1, math.inf))},
    doc="FedAT: speed tiers, tier models, mirrored cross-tier weights, FedAvg warm-up",
  ),
)

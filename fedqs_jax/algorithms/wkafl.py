"""WKAFL (Zhou, Li, Ren, Yang, IEEE TPDS 2022): K-asynchronous FL with weighted,
filtered and clipped stale gradients.

Gradients vs updates. Clients upload their update Delta_i = w_i - w^(v_i), i.e. minus
the local learning rate times the sum of their local gradients; this module's
"gradient" g_i is that update (an ascent direction), and the global step is
w <- w + lr_t G rather than w - lr_t G. Cosines and norm ratios do not see the
common sign, the momentum correction adds the previous aggregated *update*, and the
clipping bounds CB1 (and CB2 ||G_hat||) are norms in parameter space.

For the K arrivals S of round t (0-based), with staleness tau_i:

  g_i   <- clip(Delta_i + alpha G^(t-1), cb1)            momentum correction, clipped
  a_i    = (e/2)^(-tau_i) / sum_{j in S} (e/2)^(-tau_j)  staleness weights
  G_hat  = sum_i a_i g_i                                  estimated global update
  sim_i  = cos(g_i, G_hat)                                (0 if either is zero)
  keep i iff sim_i > sim_threshold
  p_i    proportional to exp(beta sim_i) a_i over the kept arrivals, normalised
  stage two (t >= stage_rounds): g_i <- clip(g_i, cb2 ||G_hat||)
  G^t    = sum_i p_i g_i
  lr_t   = server_lr / (1 + lr_decay min_{i in S} tau_i)
  w     <- w + lr_t G^t                                   (an optax SGD step)

clip(x, c) = x min(1, c / ||x||) on the global norm of the whole pytree. G^(-1) = 0.
If no arrival passes the similarity filter, the global model is kept and G^t = 0 (the
update applied this round). Weights are computed in log space (exp(50) a_i is finite in
float32, but (e/2)^(-tau) underflows for tau > ~290).

Defaults: alpha = 0.1, sim_threshold = 0.3, beta = 50, lr_decay = 0.01 (the paper);
cb1 = 20 and cb2 = 1.5 (the FedQS reference's `clip` and `norm_bound`); stage two from
round 100 (the paper switches on the training progress, the reference on a loss
threshold; here a round count, an assumption to tune).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedqs_jax.algorithms import base

LOG_DECAY = math.log(math.e / 2.0)  # -log of the per-round staleness factor (e/2)^(-1)


class WKAFLState(NamedTuple):
  prev_update: base.Params  # [*params] G^(t-1), the previous aggregated update
  round: jnp.ndarray  # [] int32 t, aggregations so far
  optimizer: object  # the server SGD's optax state


def _global_norm(x: base.Params) -> jnp.ndarray:
  return optax.tree.norm(x).astype(jnp.float32)


def _scale(x: base.Params, factor: jnp.ndarray) -> base.Params:
  return jax.tree.map(lambda leaf: leaf * factor.astype(leaf.dtype), x)


def clip(x: base.Params, bound: jnp.ndarray) -> base.Params:
  """x min(1, bound / ||x||) (global norm; a zero x stays zero)."""
  norm = _global_norm(x)
  return _scale(x, jnp.where(norm > bound, bound / jnp.where(norm > 0, norm, 1.0), 1.0))


def cosine(x: base.Params, y: base.Params) -> jnp.ndarray:
  """cos(x, y) over all leaves; 0 when either is zero."""
  dot = sum(
    jax.tree.leaves(jax.tree.map(lambda a, b: jnp.vdot(a, b).astype(jnp.float32), x, y)),
    jnp.zeros((), jnp.float32),
  )
  norms = _global_norm(x) * _global_norm(y)
  return jnp.where(norms > 0, dot / jnp.where(norms > 0, norms, 1.0), 0.0)


def wkafl() -> base.Algorithm:
  def optimizer(lr):
    return base.server_sgd(lr)

  def init(params, num_clients, hparams):
    del num_clients
    return WKAFLState(
      prev_update=jax.tree.map(jnp.zeros_like, params),
      round=jnp.zeros((), jnp.int32),
      optimizer=optimizer(hparams["server_lr"]).init(params),
    ), ()

  def aggregate(server: WKAFLState, params, arrivals: base.Arrivals, h):
    mask = arrivals.mask
    tau = arrivals.staleness.astype(jnp.float32)
    # Momentum correction by the previous global update, clipped to cb1.
    g = jax.vmap(
      lambda d: clip(jax.tree.map(lambda x, m: x + h["alpha"] * m, d, server.prev_update), h["cb1"])
    )(arrivals.payload)
    log_a = -LOG_DECAY * tau
    a = jax.nn.softmax(jnp.where(mask, log_a, 0.0), where=mask)
    g_hat = base.weighted_sum(a, g)
    sim = jax.vmap(cosine, in_axes=(0, None))(g, g_hat)
    keep = mask & (sim > h["sim_threshold"])
    p = jax.nn.softmax(jnp.where(keep, h["beta"] * sim + log_a, 0.0), where=keep)
    # Stage two: each g_i also clipped to cb2 ||G_hat||.
    stage_two = server.round >= h["stage_rounds"]
    bound = jnp.where(stage_two, h["cb2"] * _global_norm(g_hat), jnp.inf)
    g = jax.vmap(clip, in_axes=(0, None))(g, bound)
    update = base.weighted_sum(p, g)  # all zeros if nothing was kept
    min_tau = jnp.min(jnp.where(mask, tau, jnp.inf))
    lr = h["server_lr"] / (1.0 + h["lr_decay"] * jnp.where(jnp.any(mask), min_tau, 0.0))
    new, opt_state = base.server_step(optimizer(lr), params, update, server.optimizer)
    new = base.tree_where(jnp.any(keep), new, params)
    metrics = {
      "kept": jnp.sum(keep.astype(jnp.float32)),
      "mean_similarity": jnp.sum(jnp.where(mask, sim, 0.0)) / jnp.maximum(jnp.sum(mask), 1),
      "server_lr": lr,
    }
    return new, WKAFLState(update, server.round + 1, opt_state), metrics

  return base.Algorithm(
    name="wkafl",
    init=init,
    client_begin=base.default_begin,
    client_end=base.upload_update,
    aggregate=aggregate,
  )


SPECS = (
  base.AlgorithmSpec(
    name="wkafl",
    section="wkafl",
    build=lambda c, ctx: wkafl(),
    hparams={
      "server_lr": (1.0, base.POSITIVE),
      "alpha": (0.1, base.NON_NEGATIVE),
      "cb1": (20.0, base.POSITIVE),
      "cb2": (1.5, base.POSITIVE),
      "sim_threshold": (0.3, base.Range(-1.0, 1.0)),
      "beta": (50.0, base.NON_NEGATIVE),
      "stage_rounds": (100.0, base.NON_NEGATIVE),
      "lr_decay": (0.01, base.NON_NEGATIVE),
    },
    doc="WKAFL: momentum-corrected, staleness- and similarity-weighted, clipped updates",
  ),
)

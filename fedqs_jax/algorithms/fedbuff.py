"""FedBuff (Nguyen et al., AISTATS 2022): buffered asynchronous aggregation.

Clients upload Delta_i = w_i - w^(v_i). When K updates are buffered,

  u  = (1 / K) sum_{i in S} s(tau_i) Delta_i,      s(tau) = (1 + tau)^(-beta)
  m <- server_momentum * m + u                     (FedAvgM-style; 0 = none)
  w <- w + server_lr * m

Defaults: K = 10, beta = 0.5, server_lr = 1, server_momentum = 0. With
beta = 0 and no momentum it is the plain mean of the buffered updates.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from fedqs_jax.algorithms import base, staleness


class FedBuffState(NamedTuple):
  momentum: base.Params  # [*params] server momentum buffer m


def fedbuff() -> base.Algorithm:
  def init(params, num_clients):
    del num_clients
    return FedBuffState(momentum=jax.tree.map(jnp.zeros_like, params)), ()

  def aggregate(server_state: FedBuffState, params, arrivals: base.Arrivals, hparams):
    k = arrivals.staleness.shape[0]
    s = staleness.discount("polynomial", arrivals.staleness, hparams["beta"], 0.0)
    update = base.weighted_sum(s / k, arrivals.payload)
    momentum = jax.tree.map(
      lambda m, u: hparams["server_momentum"] * m + u, server_state.momentum, update
    )
    new = jax.tree.map(lambda w, m: w + hparams["server_lr"] * m, params, momentum)
    return new, FedBuffState(momentum), {"mean_discount": jnp.mean(s)}

  return base.Algorithm(
    name="fedbuff",
    init=init,
    client_begin=base.default_begin,
    client_end=base.upload_update,
    aggregate=aggregate,
  )


def from_config(config: ml_collections.ConfigDict) -> tuple[base.Algorithm, base.HParams]:
  c = config.fedbuff
  return fedbuff(), {
    "server_lr": c.server_lr,
    "beta": c.beta,
    "server_momentum": c.server_momentum,
  }

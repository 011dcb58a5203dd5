"""FedSGD as in the FedQS paper: update aggregation weighted by data size.

Each client uploads Delta_i = w_i - w^(v_i); the server steps

  w <- w + server_lr * sum_{i in S} p_i Delta_i,    p_i = n_i / sum_{j in S} n_j.
"""

from __future__ import annotations

import jax
import ml_collections

from fedqs_jax.algorithms import base


def fedsgd() -> base.Algorithm:
  def aggregate(server_state, params, arrivals: base.Arrivals, hparams):
    weights = base.data_size_weights(arrivals.num_examples)
    step = base.weighted_sum(weights, arrivals.payload)
    new = jax.tree.map(lambda w, d: w + hparams["server_lr"] * d, params, step)
    return new, server_state, {}

  return base.Algorithm(
    name="fedsgd",
    init=base.stateless_init,
    client_begin=base.default_begin,
    client_end=base.upload_update,
    aggregate=aggregate,
  )


def from_config(config: ml_collections.ConfigDict) -> tuple[base.Algorithm, base.HParams]:
  return fedsgd(), {"server_lr": config.fedsgd.server_lr}

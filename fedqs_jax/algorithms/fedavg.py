"""FedAvg (McMahan et al., 2017): model aggregation weighted by data size.

Each client uploads its local model w_i = w^(v_i) + Delta_i; the server sets

  w <- sum_{i in S} p_i w_i,    p_i = n_i / sum_{j in S} n_j.

Under the `sync` protocol this is classic FedAvg; under `semi_async` stale
bases w^(v_i) re-enter the average (the FedQS paper's SAFL FedAvg). If every
arriving client is empty, the global model is kept.
"""

from __future__ import annotations

import jax.numpy as jnp

from fedqs_jax.algorithms import base


def fedavg() -> base.Algorithm:
  def aggregate(server_state, params, arrivals: base.Arrivals, hparams):
    del hparams
    weights = base.data_size_weights(arrivals.num_examples)
    mixed = base.weighted_sum(weights, arrivals.payload)
    new = base.tree_where(jnp.sum(arrivals.num_examples) > 0, mixed, params)
    return new, server_state, {}

  return base.Algorithm(
    name="fedavg",
    init=base.stateless_init,
    client_begin=base.default_begin,
    client_end=base.upload_model,
    aggregate=aggregate,
  )


SPECS = (
  base.AlgorithmSpec(
    name="fedavg",
    section="fedavg",
    build=lambda c, ctx: fedavg(),
    doc="model averaging weighted by data size",
  ),
)

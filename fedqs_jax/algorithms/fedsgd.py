"""FedSGD as in the FedQS paper: update aggregation weighted by data size.

Each client uploads Delta_i = w_i - w^(v_i); the server steps

  w <- w + server_lr * sum_{i in S} p_i Delta_i,    p_i = n_i / sum_{j in S} n_j.
"""

from __future__ import annotations

from fedqs_jax.algorithms import base


def fedsgd() -> base.Algorithm:
  def optimizer(hparams):
    return base.server_sgd(hparams["server_lr"])

  def init(params, num_clients, hparams):
    del num_clients
    return optimizer(hparams).init(params), ()

  def aggregate(server_state, params, arrivals: base.Arrivals, hparams):
    weights = base.data_size_weights(arrivals.num_examples)
    direction = base.weighted_sum(weights, arrivals.payload)
    new, server_state = base.server_step(optimizer(hparams), params, direction, server_state)
    return new, server_state, {}

  return base.Algorithm(
    name="fedsgd",
    init=init,
    client_begin=base.default_begin,
    client_end=base.upload_update,
    aggregate=aggregate,
  )


SPECS = (
  base.AlgorithmSpec(
    name="fedsgd",
    section="fedsgd",
    build=lambda c, ctx: fedsgd(),
    hparams={"server_lr": (1.0, base.POSITIVE)},
    doc="update aggregation weighted by data size, server SGD",
  ),
)

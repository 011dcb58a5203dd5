"""FedBuff (Nguyen et al., AISTATS 2022): buffered asynchronous aggregation.

Clients upload Delta_i = w_i - w^(v_i). When K updates are buffered,

  u  = (1 / K) sum_{i in S} s(tau_i) Delta_i,      s(tau) = (1 + tau)^(-beta)
  m <- server_momentum * m + u                     (FedAvgM-style; 0 = none)
  w <- w + server_lr * m

the last two lines an optax SGD with momentum on the direction u. Defaults: K = 10,
beta = 0.5, server_lr = 1, server_momentum = 0. With beta = 0 and no momentum it is
the plain mean of the buffered updates.
"""

from __future__ import annotations

import jax.numpy as jnp

from fedqs_jax.algorithms import base, staleness


def fedbuff() -> base.Algorithm:
  def optimizer(hparams):
    return base.server_sgd(hparams["server_lr"], momentum=hparams["server_momentum"])

  def init(params, num_clients, hparams):
    del num_clients
    return optimizer(hparams).init(params), ()

  def aggregate(server_state, params, arrivals: base.Arrivals, hparams):
    k = arrivals.staleness.shape[0]
    s = staleness.discount("polynomial", arrivals.staleness, hparams["beta"], 0.0)
    direction = base.weighted_sum(s / k, arrivals.payload)
    new, server_state = base.server_step(optimizer(hparams), params, direction, server_state)
    return new, server_state, {"mean_discount": jnp.mean(s)}

  return base.Algorithm(
    name="fedbuff",
    init=init,
    client_begin=base.default_begin,
    client_end=base.upload_update,
    aggregate=aggregate,
  )


SPECS = (
  base.AlgorithmSpec(
    name="fedbuff",
    section="fedbuff",
    build=lambda c, ctx: fedbuff(),
    hparams={
      "server_lr": (1.0, base.POSITIVE),
      "beta": (0.5, base.NON_NEGATIVE),
      "server_momentum": (0.0, base.FRACTION),
    },
    doc="buffered asynchronous aggregation with a polynomial staleness discount",
  ),
)

"""FedProx (Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, MLSys 2020): a proximal local term.

Each client minimises, from the global model w^(v_i) it received,

  F_i(w) + (mu / 2) ||w - w^(v_i)||^2

with the run's local SGD (the engine adds mu (w - w^(v_i)) to every gradient:
`LocalTask(prox=mu)`, start = the broadcast model), and the server aggregates the
local models exactly as FedAvg (`fedavg.fedavg`'s aggregation, reused):

  w <- sum_{i in S} p_i w_i,    p_i = n_i / sum_{j in S} n_j.

mu is a dynamic hyperparameter (the paper sweeps {0.001, 0.01, 0.1, 1}); default 0.01.
mu = 0 trains the very same local models as FedAvg: the proximal gradient term is then
0 * (w - w^(v_i)), an exact zero, so the runs agree bit for bit (tested), although the
program still computes the term.
"""

from __future__ import annotations

import jax.numpy as jnp

from fedqs_jax.algorithms import base, fedavg


def fedprox() -> base.Algorithm:
  def client_begin(client_state, server_state, broadcast: base.Broadcast, hparams):
    del server_state, broadcast
    mu = jnp.asarray(hparams["mu"], jnp.float32)
    return base.local_task(hparams, prox=mu), client_state, {}

  return fedavg.fedavg()._replace(name="fedprox", client_begin=client_begin)


SPECS = (
  base.AlgorithmSpec(
    name="fedprox",
    section="fedprox",
    build=lambda c, ctx: fedprox(),
    hparams={"mu": (0.01, base.NON_NEGATIVE)},
    doc="FedAvg with the proximal local term (mu / 2) ||w - w_start||^2",
  ),
)

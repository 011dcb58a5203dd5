"""Generalized AsyncSGD (Leconte, Jonckheere, Samsonov, Moulines, AISTATS 2024).

Asynchronous SGD on a closed queueing network (spec/QUEUEING.md): C tasks
circulate, each new task goes to client I ~ p (the routing probabilities), and
on completion of a task dispatched with w_v the server steps

  w_(k+1) = w_k - (eta / (n p_I)) g,         staleness D = k - v,

where g is the client's gradient on w_v. The importance weight 1 / (n p_I)
keeps the step unbiased under non-uniform routing (E_I[g_I / (n p_I)] is the
mean of the n client gradients); it is fixed at dispatch, when the client is
drawn (`client_begin`, from the routing vector), and travels with the
payload. With uniform routing (p_I = 1/n) it is 1: plain AsyncSGD.

Local work per task is one minibatch gradient or a few local steps of the
engine's local optimiser; then g = -Delta / eta_local with Delta = w_trained -
w_v, so the step reads

  w <- w + server_lr * (1 / (n p_I)) Delta,     server_lr = eta / eta_local

(server_lr = 1: the server takes the client's local step, reweighted).

Buffered variant (K > 1, FedBuff-style): the server averages the K weighted
updates of a round,

  w <- w + server_lr * (1 / K) sum_{j=1..K} Delta_j / (n p_(I_j)).

The average (not the sum) keeps server_lr's meaning independent of K, and
makes the algorithm equal, with uniform routing, to FedBuff with beta = 0 and
no server momentum (and, with K = 1, to FedSGD / plain AsyncSGD on any
schedule); use server_lr = K for K sequential-style steps of the same size.

The routing vector is a property of the run (the schedule is drawn from it),
not a swept hyperparameter: the builder closes over it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fedqs_jax.algorithms import base


def importance_weights(routing: np.ndarray) -> np.ndarray:
  """[N] weights 1 / (n p_i) of the clients (0 where p_i = 0: never dispatched)."""
  p = np.asarray(routing, np.float64)
  safe = np.where(p > 0, p, 1.0)
  return np.where(p > 0, 1.0 / (p.shape[0] * safe), 0.0)


def gen_async_sgd(routing: np.ndarray) -> base.Algorithm:
  """Generalized AsyncSGD with routing probabilities `routing` ([N], summing to 1).

  Client state: [N] float32, the importance weight of the client's latest task (its
  payload already carries it). Payload: Delta / (n p_I). Hyperparameter: `server_lr`.
  """
  weights = jnp.asarray(importance_weights(routing), jnp.float32)

  def optimizer(hparams):
    return base.server_sgd(hparams["server_lr"])

  def init(params, num_clients, hparams):
    return optimizer(hparams).init(params), jnp.zeros((num_clients,), jnp.float32)

  def client_begin(client_state, server_state, broadcast: base.Broadcast, hparams):
    del client_state, server_state
    weight = weights[broadcast.client]  # fixed at dispatch
    return base.local_task(hparams), weight, {"importance_weight": weight}

  def client_end(client_state, broadcast: base.Broadcast, trained, hparams):
    del hparams
    weight = client_state
    payload = jax.tree.map(lambda w, v: weight * (w - v), trained, broadcast.params)
    return payload, client_state

  def aggregate(server_state, params, arrivals: base.Arrivals, hparams):
    k = arrivals.staleness.shape[0]
    direction = base.weighted_sum(jnp.full((k,), 1.0 / k), arrivals.payload)
    new, server_state = base.server_step(optimizer(hparams), params, direction, server_state)
    return new, server_state, {}

  return base.Algorithm(
    name="gen_async_sgd",
    init=init,
    client_begin=client_begin,
    client_end=client_end,
    aggregate=aggregate,
  )


SPECS = (
  base.AlgorithmSpec(
    name="gen_async_sgd",
    section="gen_async_sgd",
    build=lambda c, ctx: gen_async_sgd(ctx.routing),
    hparams={"server_lr": (1.0, base.POSITIVE)},
    uses_routing=True,
    doc="asynchronous SGD on a closed queueing network, importance-weighted by 1/(n p_i)",
  ),
)

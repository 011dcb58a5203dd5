"""FedAC (Zang, Xue, Ou, Chu, Du, Long, AAAI 2024): staleness-aware weights, control variates
and an adaptive server step.

"Efficient Asynchronous Federated Learning with Prospective Momentum Aggregation and
Fine-Grained Correction". The paper's text was not available to us; this module follows
spec/BASELINES.md and the paper's abstract, and says where it had to assume.

1. Client weights from the temporal gradient (server). Arrival i, trained from w^(v_i),
   uploads Delta_i = w_i - w^(v_i). In round t, with w^(t-1) the current global model,

     s_i = 1 / K                                      if tau_i <= 1 (fresh)
     s_i = max(cos(w^(t-1) - w^(v_i), Delta_i), 0)     if tau_i > 1  (stale)
     p_i = s_i / sum_j s_j

   the cosine between the global drift since the update's base and the update itself,
   over all parameters flattened. K counts the real arrivals; the payload field `upload`
   is Delta_i. Assumed: a negative cosine
   (an update against the drift) gets weight 0, and an undefined one (zero drift or zero
   update) is treated as fresh. If every weight is 0 the model is kept.
2. Adaptive server step. The paper's "prospective weighted momentum with adaptive learning
   rate" could not be read; ASSUMED here: Adam (optax.adam: b1, b2, eps, server_lr, bias
   corrected) on the aggregated direction d = sum_i p_i Delta_i. Defaults b1 = 0.9,
   b2 = 0.99, eps = 1e-3 and server_lr = 0.01 are FedAdam's (Reddi et al., ICLR 2021), not
   the paper's.
3. Fine-grained gradient correction (clients): SCAFFOLD (Karimireddy et al., 2020) control
   variates, option II. Client i keeps c_i, the server c (both zero at first). A task
   trains with every local gradient corrected by c - c_i (`LocalTask(correction=...)`,
   c as broadcast at dispatch); then

     c_i+ = c_i - c + (w^(v_i) - w_i) / (K_i lr)
     c   <- c + (1 / N) sum_{i in S} (c_i+ - c_i)      (at aggregation)

   with K_i the task's local steps and lr the local learning rate. A client that trained
   no step keeps c_i.

Design (memory). The drift needs w^(v_i), which the server no longer has: the payload
carries it (one model per task in flight). That is exact and costs O(S P) in the
payload buffer; a server history of global models would cost O(H P) for an unbounded
history H, and the drift's norm cannot be assembled from scalars the client could send
(it needs the inner product of w^(t-1) with w^(v_i)). The control-variate delta
c_i+ - c_i also travels in the payload (the server has no access to client state), and
a client row keeps c_i and the correction c - c_i of its task (`client_end` cannot see
the server's c). Per grid point: payload 3 S P, client state 2 N P, server 2 P + Adam.

K_i, the task's local steps, is the engine's count for the client (`Broadcast.num_steps`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedqs_jax.algorithms import base

STALE_AFTER = 1  # arrivals with staleness above this are weighted by their cosine


class FedACClientState(NamedTuple):
  control: base.Params  # [N, *params] c_i, the client's control variate
  correction: base.Params  # [N, *params] c - c_i of the client's latest task


class FedACState(NamedTuple):
  control: base.Params  # [*params] c, the server's control variate
  num_clients: jnp.ndarray  # [] float32 N
  optimizer: Any  # the server Adam's optax state


def cosine(a: base.Params, b: base.Params) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(cos(a, b) over all leaves flattened, whether it is defined: both nonzero)."""
  na, nb = optax.tree.norm(a), optax.tree.norm(b)
  defined = (na > 0) & (nb > 0)
  return jnp.where(defined, optax.tree.vdot(a, b) / jnp.where(defined, na * nb, 1.0), 0.0), defined


def arrival_weights(
  staleness: jnp.ndarray, cos: jnp.ndarray, defined: jnp.ndarray, mask: jnp.ndarray
) -> jnp.ndarray:
  """p [K]: 1/K for fresh arrivals, max(cos, 0) for stale ones, normalised (0 if all are)."""
  k = jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32)
  stale = (staleness > STALE_AFTER) & defined
  raw = jnp.where(mask, jnp.where(stale, jnp.maximum(cos, 0.0), 1.0 / k), 0.0)
  total = jnp.sum(raw)
  return jnp.where(total > 0, raw / jnp.where(total > 0, total, 1.0), 0.0)


def fedac() -> base.Algorithm:
  def optimizer(hparams):
    return optax.adam(hparams["server_lr"], b1=hparams["b1"], b2=hparams["b2"], eps=hparams["eps"])

  def init(params, num_clients, hparams):
    zeros = jax.tree.map(lambda x: jnp.zeros((num_clients, *x.shape), x.dtype), params)
    server = FedACState(
      control=jax.tree.map(jnp.zeros_like, params),
      num_clients=jnp.float32(num_clients),
      optimizer=optimizer(hparams).init(params),
    )
    return server, FedACClientState(control=zeros, correction=zeros)

  def client_begin(row: FedACClientState, server: FedACState, b: base.Broadcast, hparams):
    del b
    correction = jax.tree.map(jnp.subtract, server.control, row.control)
    task = base.local_task(hparams, correction=correction)
    return task, row._replace(correction=correction), {}

  def client_end(row: FedACClientState, b: base.Broadcast, trained, hparams):
    update = jax.tree.map(jnp.subtract, trained, b.params)
    k = b.num_steps
    scale = 1.0 / (jnp.maximum(k, 1).astype(jnp.float32) * hparams["lr"])
    # c_i+ = c_i - c + (w^v - w_i) / (K lr) = (w^v - w_i) / (K lr) - correction
    control = jax.tree.map(
      lambda ci, corr, u: jnp.where(k > 0, -u * scale - corr, ci),
      row.control,
      row.correction,
      update,
    )
    payload = {
      "upload": update,
      "base": b.params,
      "control_delta": jax.tree.map(jnp.subtract, control, row.control),
    }
    return payload, row._replace(control=control)

  def aggregate(server: FedACState, params, arrivals: base.Arrivals, hparams):
    up = arrivals.payload
    drift = jax.tree.map(lambda w, base_: w[None] - base_, params, up["base"])  # [K, ...]
    cos, defined = jax.vmap(cosine)(drift, up["upload"])
    p = arrival_weights(arrivals.staleness, cos, defined, arrivals.mask)
    direction = base.weighted_sum(p, up["upload"])
    new, opt_state = base.server_step(optimizer(hparams), params, direction, server.optimizer)
    moved = jnp.sum(p) > 0  # else no weight: keep the model and the optimizer's state
    new = base.tree_where(moved, new, params)
    opt_state = base.tree_where(moved, opt_state, server.optimizer)
    real = arrivals.mask.astype(jnp.float32) / server.num_clients
    control = jax.tree.map(jnp.add, server.control, base.weighted_sum(real, up["control_delta"]))
    stale = arrivals.mask & (arrivals.staleness > STALE_AFTER)
    metrics = {"stale_weight": jnp.sum(jnp.where(stale, p, 0.0))}
    return new, FedACState(control, server.num_clients, opt_state), metrics

  return base.Algorithm(
    name="fedac",
    init=init,
    client_begin=client_begin,
    client_end=client_end,
    aggregate=aggregate,
  )


SPECS = (
  base.AlgorithmSpec(
    name="fedac",
    section="fedac",
    build=lambda c, ctx: fedac(),
    hparams={
      "server_lr": (0.01, base.POSITIVE),
      "b1": (0.9, base.FRACTION),
      "b2": (0.99, base.FRACTION),
      "eps": (1e-3, base.POSITIVE),
    },
    doc="cosine-weighted stale updates, SCAFFOLD control variates, Adam server step",
  ),
)

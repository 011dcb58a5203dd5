"""FADAS (Wang, Cao, Chen, Chen, ICML 2024): delay-adaptive asynchronous AMSGrad at the server.

"FADAS: Towards Federated Adaptive Asynchronous Optimization". Source: the paper and its
official code, github.com/yujiaw98/FADAS (`update.py`, `update_model_inplace`, optimizer
`fedams`; the delay-adaptive factor in `g_delay_adaptive.py`; defaults in `options.py`).

Clients upload Delta_i = w_i - w^(v_i). When K updates are buffered, with t = the server
step + 1 and tau_max = the largest staleness among the round's arrivals:

  Delta  = (1 / K) sum_{i in S} Delta_i
  m      = b1 m + (1 - b1) Delta
  v      = b2 v + (1 - b2) Delta^2
  v_hat  = max(v_hat, v)
  lambda = 1 / tau_max  if tau_max > tau_c  else 1
  w     <- w + (server_lr lambda / (1 - b1^t)) m / (sqrt(v_hat) / sqrt(1 - b2^t) + eps)

Defaults (official `options.py`): b1 = 0.9, b2 = 0.99, eps = 1e-8, tau_c = 1,
server_lr = 1 (its README runs use 1e-4..1e-3 with ResNet/CIFAR). All are dynamic.

The moments are an optax `GradientTransformation` of their own, `scale_by_fadas`:
`optax.scale_by_amsgrad` does not match, since it takes the running maximum of the
bias-corrected v (max(v_hat, v / (1 - b2^t))) and then divides by sqrt(v_hat) + eps,
while FADAS takes the maximum of the raw v and bias-corrects the maximum (with
`bias_correction_nu=False` optax would drop the 1 / sqrt(1 - b2^t) altogether). Its
state lives in the server state; lambda and the server lr scale its output
(`optax.scale_by_learning_rate`).

With b1 = 0 and lambda = 1 the step is the RMS-normalised update
w <- w + server_lr Delta / (sqrt(v_hat / (1 - b2^t)) + eps): on the first round
v_hat / (1 - b2) = Delta^2, a sign step server_lr Delta / (|Delta| + eps).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedqs_jax.algorithms import base


class ScaleByFadasState(NamedTuple):
  count: jnp.ndarray  # [] int32 server steps taken
  mu: base.Params  # m, EMA of the aggregated update
  nu: base.Params  # v, EMA of its square
  nu_max: base.Params  # v_hat, the running maximum of v


def scale_by_fadas(b1, b2, eps) -> optax.GradientTransformation:
  """m / (1 - b1^t) / (sqrt(v_hat) / sqrt(1 - b2^t) + eps), FADAS's (AMSGrad) direction."""

  def init_fn(params):
    m, v, v_hat = (optax.tree.zeros_like(params) for _ in range(3))
    return ScaleByFadasState(jnp.zeros([], jnp.int32), m, v, v_hat)

  def update_fn(updates, state: ScaleByFadasState, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)
    count = optax.safe_increment(state.count)
    mu_hat = optax.tree.bias_correction(mu, b1, count)
    root = jnp.sqrt(1.0 - b2**count)
    out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) / root.astype(v.dtype) + eps), mu_hat, nu_max)
    return out, ScaleByFadasState(count, mu, nu, nu_max)

  return optax.GradientTransformation(init_fn, update_fn)


def delay_factor(staleness: jnp.ndarray, mask: jnp.ndarray, tau_c) -> jnp.ndarray:
  """lambda = 1 / tau_max if tau_max > tau_c else 1, tau_max over the real arrivals."""
  tau_max = jnp.max(jnp.where(mask, staleness, 0)).astype(jnp.float32)
  return jnp.where(tau_max > tau_c, 1.0 / jnp.maximum(tau_max, 1.0), 1.0)


def fadas() -> base.Algorithm:
  def optimizer(hparams, factor=1.0):
    return optax.chain(
      scale_by_fadas(hparams["b1"], hparams["b2"], hparams["eps"]),
      optax.scale_by_learning_rate(hparams["server_lr"] * factor),
    )

  def init(params, num_clients, hparams):
    del num_clients
    return optimizer(hparams).init(params), ()

  def aggregate(server_state, params, arrivals: base.Arrivals, hparams):
    mask = arrivals.mask
    count = jnp.sum(mask).astype(jnp.float32)
    weights = jnp.where(mask, 1.0 / jnp.maximum(count, 1.0), 0.0)
    direction = base.weighted_sum(weights, arrivals.payload)
    factor = delay_factor(arrivals.staleness, mask, hparams["tau_c"])
    new, server_state = base.server_step(
      optimizer(hparams, factor), params, direction, server_state
    )
    return new, server_state, {"delay_factor": factor}

  return base.Algorithm(
    name="fadas",
    init=init,
    client_begin=base.default_begin,
    client_end=base.upload_update,
    aggregate=aggregate,
  )


SPECS = (
  base.AlgorithmSpec(
    name="fadas",
    section="fadas",
    build=lambda c, ctx: fadas(),
    hparams={
      "server_lr": (1.0, base.POSITIVE),
      "b1": (0.9, base.FRACTION),
      "b2": (0.99, base.FRACTION),
      "eps": (1e-8, base.POSITIVE),
      "tau_c": (1.0, base.NON_NEGATIVE),
    },
    doc="buffered updates, server AMSGrad with a delay-adaptive learning rate",
  ),
)

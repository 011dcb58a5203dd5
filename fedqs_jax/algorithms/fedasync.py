"""FedAsync (Xie, Koyejo, Gupta, 2019): staleness-weighted model mixing.

On the arrival of a local model x_i dispatched at version v_i,

  alpha_t = alpha * s(tau_i),     w <- (1 - alpha_t) w + alpha_t x_i,

with s one of `staleness.STALENESS_FUNCTIONS` (constant; polynomial
(tau + 1)^(-a); hinge with a, b). Defaults alpha = 0.6, polynomial a = 0.5,
hinge a = 10, b = 4.

With K = 1 (the `async` protocol) this is FedAsync exactly. With K > 1 (one
schedule shared with buffered methods) the K arrivals of a round are mixed in
one after another in FIFO order, each with its own staleness; the result then
depends on the arrival order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from fedqs_jax.algorithms import base, staleness


def fedasync(staleness_fn: str = "polynomial") -> base.Algorithm:
  def aggregate(server_state, params, arrivals: base.Arrivals, hparams):
    alphas = hparams["alpha"] * staleness.discount(
      staleness_fn, arrivals.staleness, hparams["staleness_a"], hparams["staleness_b"]
    )

    def mix(w, xs):
      alpha_t, x = xs
      return jax.tree.map(lambda a, b: (1.0 - alpha_t) * a + alpha_t * b, w, x), None

    new, _ = jax.lax.scan(mix, params, (alphas, arrivals.payload))
    return new, server_state, {"mean_alpha": jnp.mean(alphas)}

  return base.Algorithm(
    name="fedasync",
    init=base.stateless_init,
    client_begin=base.default_begin,
    client_end=base.upload_model,
    aggregate=aggregate,
  )


def from_config(config: ml_collections.ConfigDict) -> tuple[base.Algorithm, base.HParams]:
  c = config.fedasync
  a = c.hinge_a if c.staleness == "hinge" else c.poly_a
  return fedasync(c.staleness), {"alpha": c.alpha, "staleness_a": a, "staleness_b": c.hinge_b}

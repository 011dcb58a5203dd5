"""FedAsync (Xie, Koyejo, Gupta, 2019): staleness-weighted model mixing.

On the arrival of a local model x_i dispatched at version v_i,

  alpha_t = alpha * s(tau_i),     w <- (1 - alpha_t) w + alpha_t x_i,

with s one of `staleness.STALENESS_FUNCTIONS` (constant; polynomial
(tau + 1)^(-a); hinge with a, b). Defaults alpha = 0.6, polynomial a = 0.5,
hinge a = 10, b = 4.

Optional proximal local term (static `proximal`, off by default): each client then
minimises f_i(x) + (rho / 2) ||x - x_tau||^2 from the model x_tau it received
(`LocalTask(prox=rho)`); rho is dynamic (default 0.01). Off, the local task and the
program are exactly those without the option (rho is then unused).

With K = 1 (the `async` protocol) this is FedAsync exactly. With K > 1 (one
schedule shared with buffered methods) the K arrivals of a round are mixed in
one after another in FIFO order, each with its own staleness; the result then
depends on the arrival order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedqs_jax.algorithms import base, staleness


def fedasync(staleness_fn: str = "polynomial", proximal: bool = False) -> base.Algorithm:
  def client_begin(client_state, server_state, broadcast: base.Broadcast, hparams):
    del server_state, broadcast
    rho = jnp.asarray(hparams["rho"], jnp.float32)
    return base.local_task(hparams, prox=rho), client_state, {}

  def aggregate(server_state, params, arrivals: base.Arrivals, hparams):
    a = hparams["hinge_a"] if staleness_fn == "hinge" else hparams["poly_a"]
    alphas = hparams["alpha"] * staleness.discount(
      staleness_fn, arrivals.staleness, a, hparams["hinge_b"]
    )

    def mix(w, xs):
      alpha_t, x = xs
      return jax.tree.map(lambda a, b: (1.0 - alpha_t) * a + alpha_t * b, w, x), None

    new, _ = jax.lax.scan(mix, params, (alphas, arrivals.payload))
    return new, server_state, {"mean_alpha": jnp.mean(alphas)}

  return base.Algorithm(
    name="fedasync",
    init=base.stateless_init,
    client_begin=client_begin if proximal else base.default_begin,
    client_end=base.upload_model,
    aggregate=aggregate,
  )


SPECS = (
  base.AlgorithmSpec(
    name="fedasync",
    section="fedasync",
    build=lambda c, ctx: fedasync(c.staleness, c.proximal),
    options={
      "staleness": ("polynomial", staleness.STALENESS_FUNCTIONS),
      "proximal": (False, None),  # the proximal local term (rho / 2) ||x - x_tau||^2
    },
    hparams={
      "alpha": (0.6, base.UNIT),
      "poly_a": (0.5, base.NON_NEGATIVE),
      "hinge_a": (10.0, base.NON_NEGATIVE),
      "hinge_b": (4.0, base.NON_NEGATIVE),
      "rho": (0.01, base.NON_NEGATIVE),  # used with proximal=True only
    },
    doc="staleness-weighted model mixing, one arrival after another",
  ),
)

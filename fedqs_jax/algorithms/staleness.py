"""Staleness discount functions s(tau) of the asynchronous baselines.

  constant     s(tau) = 1
  polynomial   s(tau) = (tau + 1) ** (-a)
  hinge        s(tau) = 1 if tau <= b else 1 / (a (tau - b) + 1)

(Xie, Koyejo, Gupta 2019, "Asynchronous Federated Optimization".) The function
is chosen by name (static); its exponents `a`, `b` are dynamic values.
"""

from __future__ import annotations

import jax.numpy as jnp

STALENESS_FUNCTIONS = ("constant", "polynomial", "hinge")


def discount(name: str, staleness: jnp.ndarray, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """s(tau) elementwise for integer staleness `tau >= 0`."""
  tau = jnp.asarray(staleness, jnp.float32)
  if name == "constant":
    return jnp.ones_like(tau)
  if name == "polynomial":
    return (tau + 1.0) ** (-a)
  if name == "hinge":
    return jnp.where(tau <= b, 1.0, 1.0 / (a * (tau - b) + 1.0))
  raise ValueError(f"unknown staleness function {name!r}; expected one of {STALENESS_FUNCTIONS}")

"""Federated algorithms, registered by name.

Each module exposes a lowercase builder (`fedbuff()`) returning a
`base.Algorithm` and `from_config(config)` returning the algorithm and its
dynamic hyperparameters (a dict of floats, vmappable by a grid).
"""

from __future__ import annotations

import ml_collections

from fedqs_jax.algorithms import base, fedasync, fedavg, fedbuff, fedsgd, staleness
from fedqs_jax.algorithms.base import Algorithm, Arrivals, Broadcast, LocalSettings
from fedqs_jax.errors import check

__all__ = ["REGISTRY", "Algorithm", "Arrivals", "Broadcast", "LocalSettings", "build", "names"]

REGISTRY = {
  "fedavg": fedavg.from_config,
  "fedsgd": fedsgd.from_config,
  "fedbuff": fedbuff.from_config,
  "fedasync": fedasync.from_config,
}


def names() -> tuple[str, ...]:
  return tuple(REGISTRY)


def validate(name: str, config: ml_collections.ConfigDict) -> None:
  check(name in REGISTRY, "algorithms", name, f"each must be one of {names()}")
  if name == "fedasync":
    c = config.fedasync
    fns = staleness.STALENESS_FUNCTIONS
    check(c.staleness in fns, "fedasync.staleness", c.staleness, f"must be one of {fns}")
    check(0 < c.alpha <= 1, "fedasync.alpha", c.alpha, "must be in (0, 1]")
  if name == "fedbuff":
    check(config.fedbuff.beta >= 0, "fedbuff.beta", config.fedbuff.beta, "must be >= 0")


def build(name: str, config: ml_collections.ConfigDict) -> tuple[Algorithm, base.HParams]:
  """The algorithm `name` and its dynamic hyperparameters from `config`."""
  validate(name, config)
  return REGISTRY[name](config)

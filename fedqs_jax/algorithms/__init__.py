"""Federated algorithms, registered by name.

Each module exposes a lowercase builder (`fedbuff()`) returning a
`base.Algorithm` and `from_config(config)` returning the algorithm and its
dynamic hyperparameters (a dict of floats, vmappable by a grid).
"""

from __future__ import annotations

import ml_collections

from fedqs_jax.algorithms import (
  base,
  fedasync,
  fedavg,
  fedbuff,
  fedqs,
  fedsgd,
  gen_async_sgd,
  similarity,
  staleness,
)
from fedqs_jax.algorithms.base import Algorithm, Arrivals, Broadcast, LocalSettings
from fedqs_jax.errors import check

__all__ = ["REGISTRY", "Algorithm", "Arrivals", "Broadcast", "LocalSettings", "build", "names"]

REGISTRY = {
  "fedavg": fedavg.from_config,
  "fedsgd": fedsgd.from_config,
  "fedbuff": fedbuff.from_config,
  "fedasync": fedasync.from_config,
  "fedqs_sgd": fedqs.builder("sgd"),
  "fedqs_avg": fedqs.builder("avg"),
  "gen_async_sgd": gen_async_sgd.from_config,
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
  if name.startswith("fedqs"):
    c = config.fedqs
    sims = similarity.SIMILARITIES
    check(c.similarity in sims, "fedqs.similarity", c.similarity, f"must be one of {sims}")
    bw = fedqs.BASE_WEIGHTS
    check(c.base_weights in bw, "fedqs.base_weights", c.base_weights, f"must be one of {bw}")
    fw = fedqs.FEEDBACK_WEIGHTS
    check(c.feedback_weight in fw, "fedqs.feedback_weight", c.feedback_weight,
          f"must be one of {fw}")  # fmt: skip
    for field in ("a", "m0", "k", "m_cap", "phi", "spread_threshold"):
      check(c[field] >= 0, f"fedqs.{field}", c[field], "must be >= 0")
    for field in ("f_max", "g_max", "server_lr"):
      check(c[field] > 0, f"fedqs.{field}", c[field], "must be > 0")
    check(0 < c.lr_min <= c.lr_max, "fedqs.lr_min", c.lr_min,
          f"must be in (0, fedqs.lr_max={c.lr_max}]")  # fmt: skip
  if name == "fedbuff":
    check(config.fedbuff.beta >= 0, "fedbuff.beta", config.fedbuff.beta, "must be >= 0")
  if name == "gen_async_sgd":
    lr = config.gen_async_sgd.server_lr
    check(lr > 0, "gen_async_sgd.server_lr", lr, "must be > 0")


def build(name: str, config: ml_collections.ConfigDict) -> tuple[Algorithm, base.HParams]:
  """The algorithm `name` and its dynamic hyperparameters from `config`."""
  validate(name, config)
  return REGISTRY[name](config)

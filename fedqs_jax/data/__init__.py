"""Federated datasets: a registry of offline loaders behind one `load(config, seed)`.

The data config (an `ml_collections.ConfigDict`, usually `config.data`) has
the fields

  name             one of `DATASETS`
  num_clients      N >= 1
  partition        one of `PARTITIONS` (digits; synthetic has its own clients)
  dirichlet_alpha  > 0, read only when partition == "dirichlet"
  test_fraction    in (0, 1), share held out as the server's test set
  synthetic_alpha  >= 0, read only when name == "synthetic"
  synthetic_beta   >= 0, read only when name == "synthetic"
  validation_fraction  optional, in [0, 1), default 0.0: per-client validation
                   data for FedQS's SBC check (0 = none; see `with_validation`)
  validation_mode  optional, one of `VALIDATION_MODES`, default "holdout"

Error messages name fields as `data.<field>`.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from fedqs_jax.data.base import FederatedData, index_table
from fedqs_jax.data.digits import load_digits
from fedqs_jax.data.synthetic import load_synthetic
from fedqs_jax.data.validation import VALIDATION_MODES, with_validation
from fedqs_jax.errors import ConfigError, check

__all__ = [
  "DATASETS",
  "IMAGE_DATASETS",
  "PARTITIONS",
  "VALIDATION_MODES",
  "FederatedData",
  "index_table",
  "load",
  "load_digits",
  "load_synthetic",
  "validate",
  "with_validation",
]

DATASETS = ("digits", "synthetic")
IMAGE_DATASETS = ("digits",)  # [n, H, W, C] features; the others are flat vectors
PARTITIONS = ("iid", "dirichlet")


def _field(config: ml_collections.ConfigDict, name: str) -> Any:
  if name not in config:
    raise ConfigError(f"data.{name} is missing from the data config")
  return config[name]


def _is_number(value: Any) -> bool:
  return isinstance(value, int | float) and not isinstance(value, bool)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` naming the field and its allowed range for a bad data config."""
  name = _field(config, "name")
  check(name in DATASETS, "data.name", name, f"must be one of {DATASETS}")
  num_clients = _field(config, "num_clients")
  check(
    isinstance(num_clients, int) and not isinstance(num_clients, bool) and num_clients >= 1,
    "data.num_clients",
    num_clients,
    "must be an integer >= 1",
  )
  partition = _field(config, "partition")
  check(partition in PARTITIONS, "data.partition", partition, f"must be one of {PARTITIONS}")
  if partition == "dirichlet":
    alpha = _field(config, "dirichlet_alpha")
    check(_is_number(alpha) and alpha > 0, "data.dirichlet_alpha", alpha, "must be > 0")
  test_fraction = _field(config, "test_fraction")
  check(
    _is_number(test_fraction) and 0 < test_fraction < 1,
    "data.test_fraction",
    test_fraction,
    "must be in (0, 1)",
  )
  if name == "synthetic":
    for field in ("synthetic_alpha", "synthetic_beta"):
      value = _field(config, field)
      check(_is_number(value) and value >= 0, f"data.{field}", value, "must be >= 0")
  validation_fraction = config.get("validation_fraction", 0.0)
  check(
    _is_number(validation_fraction) and 0 <= validation_fraction < 1,
    "data.validation_fraction",
    validation_fraction,
    "must be in [0, 1)",
  )
  validation_mode = config.get("validation_mode", "holdout")
  check(
    validation_mode in VALIDATION_MODES,
    "data.validation_mode",
    validation_mode,
    f"must be one of {VALIDATION_MODES}",
  )


def load(config: ml_collections.ConfigDict, seed: int) -> FederatedData:
  """Validates `config` and loads the named dataset, its arrays on the default device.

  Args:
    config: the data config (fields in the module docstring).
    seed: integer seed of the data's NumPy streams (split, partition, generation).

  Returns:
    `FederatedData`; see `load_digits` and `load_synthetic` for shapes. With
    `validation_fraction` > 0, `with_validation` has drawn the clients'
    validation sets (in "holdout" mode they leave the training rows).
  """
  validate(config)
  if config.name == "digits":
    data = load_digits(
      num_clients=config.num_clients,
      partition=config.partition,
      dirichlet_alpha=config.get("dirichlet_alpha", 0.5),
      test_fraction=config.test_fraction,
      seed=seed,
    )
  else:
    data = load_synthetic(
      num_clients=config.num_clients,
      alpha=config.synthetic_alpha,
      beta=config.synthetic_beta,
      test_fraction=config.test_fraction,
      seed=seed,
    )
  return with_validation(
    data,
    fraction=config.get("validation_fraction", 0.0),
    mode=config.get("validation_mode", "holdout"),
    seed=_validation_seed(seed),
  )


def _validation_seed(seed: int) -> int:
  """The validation draw's seed, independent of the loaders' streams: `SeedSequence([seed, 2])`."""
  return int(np.random.SeedSequence([seed, 2]).generate_state(1)[0])

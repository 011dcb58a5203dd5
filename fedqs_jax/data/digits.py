"""scikit-learn's bundled handwritten digits, split over clients.

1797 real 8x8 grey-level images of the digits 0-9 (UCI optdigits test set),
shipped inside scikit-learn, so this loader works offline. It is the project's
offline stand-in for CIFAR-10 with the same "HeteroDiri" Dirichlet split.

Randomness: two independent NumPy streams derived from `seed`, one for the
stratified train/test split (`SeedSequence([seed, 0])`) and one for the
client partition (`SeedSequence([seed, 1])`), so changing the partition
settings never changes which examples are held out.
"""

from __future__ import annotations

import numpy as np
from sklearn import datasets as sk_datasets

from fedqs_jax.data import partition as partition_lib
from fedqs_jax.data.base import FederatedData
from fedqs_jax.errors import check

NUM_CLASSES = 10
PARTITIONS = ("iid", "dirichlet")


def stratified_split(
  labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """Holds out `round(test_fraction * n_c)` shuffled examples of every class c.

  Args:
    labels: [n] integer class labels.
    test_fraction: in (0, 1).
    rng: one `permutation` draw per class, classes in increasing order.

  Returns:
    (train_idx [n_train], test_idx [n_test]), sorted int64, disjoint, covering range(n).
  """
  train, test = [], []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    n_test = int(np.round(test_fraction * len(idx)))
    test.append(idx[:n_test])
    train.append(idx[n_test:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits(
  num_clients: int,
  partition: str = "iid",
  dirichlet_alpha: float = 0.5,
  test_fraction: float = 0.2,
  seed: int = 0,
) -> FederatedData:
  """Loads the digits, splits train/test stratified, and partitions train over clients.

  Args:
    num_clients: N >= 1.
    partition: "iid" (`partition.iid`) or "dirichlet" (`partition.hetero_dirichlet`).
    dirichlet_alpha: Dirichlet concentration, used when partition == "dirichlet".
    test_fraction: share of each class held out as the server's test set, in (0, 1).
    seed: integer seed of both NumPy streams (see the module docstring).

  Returns:
    `FederatedData` with x_train [n_train, 8, 8, 1] and x_test [n_test, 8, 8, 1]
    float32 in [0, 1] (pixel / 16), int32 labels in [0, 10), num_classes 10.
    With the default test_fraction 0.2: n_train = 1438, n_test = 359.
  """
  check(partition in PARTITIONS, "partition", partition, f"must be one of {PARTITIONS}")
  check(0.0 < test_fraction < 1.0, "test_fraction", test_fraction, "must be in (0, 1)")
  x, y = sk_datasets.load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
  y = y.astype(np.int32)

  return split_and_partition(x, y, num_clients, partition, dirichlet_alpha, test_fraction, seed)


def split_and_partition(
  x: np.ndarray,
  y: np.ndarray,
  num_clients: int,
  partition: str,
  dirichlet_alpha: float,
  test_fraction: float,
  seed: int,
) -> FederatedData:
  """A labelled image set split train/test stratified (stream [seed, 0]) and its training
  part partitioned over the clients (stream [seed, 1]): digits' layout, 10 classes."""
  split_rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
  part_rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
  train_idx, test_idx = stratified_split(y, test_fraction, split_rng)
  y_train = y[train_idx]
  if partition == "iid":
    parts = partition_lib.iid(len(train_idx), num_clients, part_rng)
  else:
    parts = partition_lib.hetero_dirichlet(y_train, num_clients, dirichlet_alpha, part_rng)
  return partition_lib.pack(
    x[train_idx], y_train, parts, x[test_idx], y[test_idx], num_classes=NUM_CLASSES
  )

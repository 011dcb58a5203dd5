"""Splitting a training set over clients.

A partition is a list of `N` int64 index arrays, one per client, that together
hold every example index in `range(n)` exactly once. Each client's array is
sorted ascending. Clients may own 0 examples; the engine handles them.

`pack` turns training/test arrays and a partition into a `FederatedData`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from fedqs_jax.data.base import FederatedData, index_table, no_validation
from fedqs_jax.errors import check


def iid(num_examples: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
  """Shuffles `range(num_examples)` and splits it as evenly as possible.

  Client sizes differ by at most one (`np.array_split`); with more clients
  than examples the trailing clients are empty.

  Args:
    num_examples: n, the number of training examples.
    num_clients: N >= 1.
    rng: the only source of randomness (one `permutation` draw).

  Returns:
    N sorted int64 arrays of shape [n_i], a partition of `range(n)`.
  """
  check(num_clients >= 1, "num_clients", num_clients, "must be >= 1")
  perm = rng.permutation(num_examples)
  return [np.sort(part) for part in np.array_split(perm, num_clients)]


def hetero_dirichlet(
  labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
  """The reference "HeteroDiri" label-skew partition.

  For each class c in increasing label order, with `idx_c` the n_c indices of
  that class:

    q_c  ~ Dirichlet(alpha * 1_N)                  (one `rng.dirichlet` draw)
    shuffle idx_c                                  (one `rng.shuffle`, after q_c)
    cuts = min(cumsum(round(q_c * n_c)), n_c)[:-1]
    client k gets idx_c[cuts[k-1]:cuts[k]]         (cuts[-1] = 0, cuts[N-1] = n_c)

  `round` is NumPy's half-to-even. Clipping the cut points to n_c keeps every
  example assigned exactly once when the rounded shares overshoot; the last
  client takes whatever the rounded shares leave. Small `alpha` gives strongly
  skewed clients (often empty ones); large `alpha` tends to IID class shares.

  Args:
    labels: [n] integer class labels.
    num_clients: N >= 1.
    alpha: Dirichlet concentration x > 0.
    rng: the only source of randomness.

  Returns:
    N sorted int64 arrays of shape [n_i], a partition of `range(n)`.
  """
  check(num_clients >= 1, "num_clients", num_clients, "must be >= 1")
  check(alpha > 0, "dirichlet_alpha", alpha, "must be > 0")
  labels = np.asarray(labels)
  chunks: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
  for c in np.unique(labels):
    q = rng.dirichlet(alpha * np.ones(num_clients))
    idx = np.flatnonzero(labels == c)
    rng.shuffle(idx)
    n_c = len(idx)
    cuts = np.minimum(np.cumsum(np.round(q * n_c)).astype(np.int64), n_c)[:-1]
    for k, part in enumerate(np.split(idx, cuts)):
      chunks[k].append(part)
  return [np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64) for parts in chunks]


def pack(
  x_train: np.ndarray,
  y_train: np.ndarray,
  parts: list[np.ndarray],
  x_test: np.ndarray,
  y_test: np.ndarray,
  num_classes: int,
) -> FederatedData:
  """Builds a device-resident `FederatedData` from host arrays and a partition.

  Args:
    x_train: [n_train, *feature_shape] features (cast to float32).
    y_train: [n_train] labels (cast to int32).
    parts: N index arrays into `x_train`, a partition of `range(n_train)`.
    x_test: [n_test, *feature_shape] features (cast to float32).
    y_test: [n_test] labels (cast to int32).
    num_classes: number of label classes.

  Returns:
    `FederatedData` with jnp arrays; `client_index` is [N, max_n] int32. It has
    no validation data (`val_index` [N, 1] zeros, `val_count` zeros); see
    `fedqs_jax.data.validation.with_validation`.
  """
  table, counts = index_table(parts)
  val_index, val_count = no_validation(len(parts))
  return FederatedData(
    x_train=jnp.asarray(x_train, dtype=jnp.float32),
    y_train=jnp.asarray(y_train, dtype=jnp.int32),
    client_index=jnp.asarray(table, dtype=jnp.int32),
    client_count=jnp.asarray(counts, dtype=jnp.int32),
    val_index=val_index,
    val_count=val_count,
    x_test=jnp.asarray(x_test, dtype=jnp.float32),
    y_test=jnp.asarray(y_test, dtype=jnp.int32),
    num_classes=int(num_classes),
  )

"""Per-client validation data for FedQS's SBC check (straggler vs distribution shift).

`with_validation` works on the packed arrays of a `FederatedData`, so it applies
to every loader. Two modes (`VALIDATION_MODES`):

  holdout    (default, the paper's 8:2 split) for each client i with n_i
             examples, hold out v_i = min(round(fraction * n_i), n_i - 1)
             examples chosen uniformly at random (`round` is NumPy's
             half-to-even; the cap keeps at least one training example, and
             only binds for tiny clients with a large fraction, never for
             fraction <= 0.5). They are REMOVED from the client's training
             rows: training and validation are disjoint and together are the
             original client set. Empty clients stay empty.
  reference  (the reference code) for each client and each class present in
             its data, up to `per_class` examples of that class drawn at random
             without replacement from the client's training examples. They
             STAY in training (overlap). `fraction` is ignored except that
             fraction == 0 still means "no validation".

With fraction == 0 the data is returned with empty validation fields
(`val_index` [N, 1] zeros, `val_count` zeros) and is otherwise unchanged.

Randomness: one NumPy generator `default_rng(seed)`, clients in order; holdout
draws one `permutation(n_i)` per non-empty client, reference one
`permutation(n_ic)` per (client, present class), classes in increasing order.
Pass a seed that is independent of the loader's streams (`load` uses
`SeedSequence([data_seed, 2])`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from fedqs_jax.data.base import FederatedData, index_table, no_validation
from fedqs_jax.errors import check

VALIDATION_MODES = ("holdout", "reference")


def _client_rows(data: FederatedData) -> list[np.ndarray]:
  """Each client's training rows into `x_train`, N int64 arrays of shape [n_i]."""
  index = np.asarray(data.client_index)
  counts = np.asarray(data.client_count)
  return [index[i, : int(c)].astype(np.int64) for i, c in enumerate(counts)]


def holdout_split(
  rows: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """Splits one client's rows into (train [n_i - v_i], validation [v_i]).

  v_i = min(round(fraction * n_i), n_i - 1) for n_i >= 1, 0 for an empty client.
  Both outputs keep the input's relative order. Draws one `rng.permutation(n_i)`
  when n_i >= 1, nothing otherwise.
  """
  n = len(rows)
  if n == 0:
    return rows, rows
  n_val = min(int(np.round(fraction * n)), n - 1)
  held = np.zeros(n, dtype=bool)
  held[rng.permutation(n)[:n_val]] = True
  return rows[~held], rows[held]


def reference_sample(
  rows: np.ndarray, labels: np.ndarray, per_class: int, rng: np.random.Generator
) -> np.ndarray:
  """Up to `per_class` random rows of every class present among one client's rows.

  Args:
    rows: [n_i] the client's training rows into `x_train`.
    labels: [n_i] their labels.
    per_class: the cap per class, >= 1.
    rng: one `permutation` draw per present class, classes in increasing order.

  Returns:
    [v_i] sorted int64 rows, a subset of `rows`.
  """
  picked = []
  for c in np.unique(labels):
    of_class = rows[labels == c]
    picked.append(rng.permutation(of_class)[:per_class])
  return np.sort(np.concatenate(picked)) if picked else rows[:0]


def with_validation(
  data: FederatedData, fraction: float, mode: str, seed: int, per_class: int = 20
) -> FederatedData:
  """Returns `data` with per-client validation sets (see the module docstring).

  Args:
    data: a packed `FederatedData`; any existing validation fields are replaced.
    fraction: in [0, 1); the holdout share, 0 = no validation in either mode.
    mode: one of `VALIDATION_MODES`.
    seed: integer seed of the NumPy generator.
    per_class: the per-class cap of the "reference" mode, >= 1.

  Returns:
    `FederatedData` sharing `x_train`, `y_train`, `x_test`, `y_test` with
    `data`; `val_index` [N, max(max_i v_i, 1)] int32, `val_count` [N] int32; in
    "holdout" mode also a rebuilt `client_index` [N, max_i (n_i - v_i)] int32
    and `client_count` [N] int32.
  """
  check(mode in VALIDATION_MODES, "validation_mode", mode, f"must be one of {VALIDATION_MODES}")
  check(
    isinstance(fraction, int | float) and 0.0 <= fraction < 1.0,
    "validation_fraction",
    fraction,
    "must be in [0, 1)",
  )
  check(per_class >= 1, "validation_per_class", per_class, "must be >= 1")
  if fraction == 0:
    val_index, val_count = no_validation(data.num_clients)
    return data.replace(val_index=val_index, val_count=val_count)

  rng = np.random.default_rng(seed)
  rows = _client_rows(data)
  if mode == "holdout":
    splits = [holdout_split(r, fraction, rng) for r in rows]
    train_table, train_counts = index_table([t for t, _ in splits])
    val_table, val_counts = index_table([v for _, v in splits])
    data = data.replace(
      client_index=jnp.asarray(train_table, jnp.int32),
      client_count=jnp.asarray(train_counts, jnp.int32),
    )
  else:
    y_train = np.asarray(data.y_train)
    val_table, val_counts = index_table(
      [reference_sample(r, y_train[r], per_class, rng) for r in rows]
    )
  return data.replace(
    val_index=jnp.asarray(val_table, jnp.int32), val_count=jnp.asarray(val_counts, jnp.int32)
  )

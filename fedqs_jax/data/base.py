"""The on-device layout of a federated dataset.

All training examples live in one array; each client owns a row of an index
table. Shapes are static for a run, so the training scan can gather a
client's minibatch with plain indexing inside `jit`.
"""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class FederatedData:
  """A federated dataset, ready for the engine (a pytree: jitted functions take it whole).

  Attributes:
    x_train: [n_train, *feature_shape] float32 (int32 character ids for text), every
      client's examples.
    y_train: [n_train] int32 labels.
    client_index: [N, max_n] int32 rows into `x_train`; entries at positions
      >= `client_count[i]` are padding (0) and are never read unmasked.
    client_count: [N] int32 number of examples of each client (0 is legal).
    val_index: [N, max_v] int32 rows into `x_train` of each client's validation
      examples (FedQS's SBC check); entries at positions >= `val_count[i]` are
      padding (0). Without validation data it is [N, 1] zeros.
    val_count: [N] int32 number of validation examples of each client (0 = none).
      See `fedqs_jax.data.validation.with_validation` for how they are drawn.
    x_test: [n_test, *feature_shape] float32 (int32 for text), the server's test set.
    y_test: [n_test] int32.
    num_classes: number of label classes (static: not a pytree leaf).
  """

  x_train: jnp.ndarray
  y_train: jnp.ndarray
  client_index: jnp.ndarray
  client_count: jnp.ndarray
  val_index: jnp.ndarray
  val_count: jnp.ndarray
  x_test: jnp.ndarray
  y_test: jnp.ndarray
  num_classes: int = flax.struct.field(pytree_node=False)

  @property
  def num_clients(self) -> int:
    return int(self.client_index.shape[0])

  @property
  def max_client_size(self) -> int:
    return int(self.client_index.shape[1])

  @property
  def max_val_size(self) -> int:
    return int(self.val_index.shape[1])

  @property
  def feature_shape(self) -> tuple[int, ...]:
    return tuple(self.x_train.shape[1:])


def index_table(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Packs per-client example indices into a padded [N, max_n] table and counts."""
  counts = np.array([len(p) for p in parts], dtype=np.int32)
  width = max(int(counts.max(initial=0)), 1)
  table = np.zeros((len(parts), width), dtype=np.int32)
  for i, p in enumerate(parts):
    table[i, : len(p)] = p
  return table, counts


def no_validation(num_clients: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The empty validation fields: `val_index` [N, 1] int32 zeros and `val_count` [N] int32 zeros."""
  return jnp.zeros((num_clients, 1), jnp.int32), jnp.zeros(num_clients, jnp.int32)

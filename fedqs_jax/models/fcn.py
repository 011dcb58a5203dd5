"""The paper's fully connected net for UCI Adult (FedQS's RWD task).

As in the FedQS reference code (`Net` in `resnet_model.py`):

  Dense(11 -> 500) -> ReLU -> Dropout(0.3) -> Dense(500 -> 2)

11 * 500 + 500 + 500 * 2 + 2 = 7,002 parameters for the 11 Adult features.
Dropout draws from the 'dropout' rng stream and is active only with
`train=True`; at evaluation the net is deterministic.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from fedqs_jax.models import hooks


class FCN(nn.Module):
  """Flatten -> Dense(hidden) -> ReLU -> Dropout(dropout) -> Dense(num_classes).

  Input [B, d] (any trailing shape is flattened; d = 11 for Adult), output
  [B, num_classes] logits.
  """

  num_classes: int
  hidden: int = 500
  dropout: float = 0.3

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = x.reshape((x.shape[0], -1))
    x = hooks.relu(nn.Dense(self.hidden, name="hidden")(x))
    x = nn.Dropout(self.dropout, deterministic=not train, name="dropout")(x)
    return nn.Dense(self.num_classes, name="head")(x)

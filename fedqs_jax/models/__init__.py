"""Models: small Flax linen modules built by name.

Every model maps a batch of examples to logits, `module.apply({"params": p}, x)`;
the engine only sees the pure `apply` function and the parameter pytree.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from fedqs_jax.errors import check

MODELS = ("mlp", "cnn")


class MLP(nn.Module):
  """Fully connected net: flatten -> [Dense -> ReLU] * len(hidden) -> Dense(num_classes)."""

  num_classes: int
  hidden: Sequence[int] = (64,)

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_classes)(x)


class CNN(nn.Module):
  """Small CNN for [B, H, W, C] images: 3x3 conv + ReLU blocks (2x2 average pooling
  between them), flatten, Dense(dense) + ReLU, Dense(num_classes)."""

  num_classes: int
  channels: Sequence[int] = (16, 32)
  dense: int = 64

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    for i, width in enumerate(self.channels):
      x = nn.relu(nn.Conv(width, (3, 3), padding="SAME")(x))
      if i + 1 < len(self.channels):
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.dense)(x))
    return nn.Dense(self.num_classes)(x)


def validate(config: ml_collections.ConfigDict) -> None:
  check(config.name in MODELS, "model.name", config.name, f"must be one of {MODELS}")


def build(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """The model named by `config.name` (fields: `hidden` for mlp, `channels` for cnn)."""
  validate(config)
  if config.name == "mlp":
    return MLP(num_classes=num_classes, hidden=tuple(config.get("hidden", (64,))))
  return CNN(num_classes=num_classes, channels=tuple(config.get("channels", (16, 32))))

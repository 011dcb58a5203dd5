"""Models: Flax linen modules built by name.

Every model maps a batch of examples to logits with the same signature,
`module.apply(variables, x, train=False)`:

  - `train` (default False) switches Dropout on (it then draws from the
    'dropout' rng: `apply(..., train=True, rngs={"dropout": key})`) and makes
    BatchNorm use the minibatch's statistics and update its running averages
    (collection 'batch_stats': `apply(..., train=True, mutable=["batch_stats"])`);
  - with `train=False` every model is a deterministic function of its
    variables, so `module.apply({"params": p}, x)` works for every model that
    has no 'batch_stats' (all but `resnet18` with norm="batch").

`stateful_collections` and `uses_dropout` tell the engine which of these a
model config needs.

The ReLUs, max-pools and BatchNorm modes go through `hooks` (exactly `nn.relu`,
`nn.max_pool` and `not train` in normal use), which FedSQ's dual mode (`dual`: a frozen
structural copy gates a trainable quantitative copy) records and substitutes.

| name | module | input | paper task |
|---|---|---|---|
| mlp | `MLP` | any, flattened | - |
| cnn | `CNN` | [B, H, W, C] images | - |
| resnet18 | `resnet.ResNet18` | [B, H, W, C] images | CV (CIFAR-10) |
| lstm | `lstm.CharLSTM` | [B, T] int32 characters | NLP (Shakespeare) |
| fcn | `fcn.FCN` | [B, 11] features | RWD (Adult) |

Model config fields (`config.model`, read with defaults so older configs stay valid):

  name         one of `MODELS`
  hidden       mlp: hidden widths, default (64,)
  channels     cnn: conv widths, default (16, 32)
  pool         cnn: "avg" (default) or "max" pooling between the conv blocks
  width        resnet18: stem / stage-1 channels, default 64 (the paper's)
  norm         resnet18: "group" (default) or "batch"
  groups       resnet18: GroupNorm groups, default 2, must divide `width`
  embed_dim    lstm: embedding width, default 8
  lstm_hidden  lstm: LSTM width, default 128
  lstm_layers  lstm: stacked LSTM layers, default 2
  fcn_hidden   fcn: hidden width, default 500
  dropout      fcn: dropout rate in [0, 1), default 0.3
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from fedqs_jax.errors import check
from fedqs_jax.models import hooks
from fedqs_jax.models.fcn import FCN
from fedqs_jax.models.lstm import CharLSTM
from fedqs_jax.models.resnet import NORMS, ResNet18

__all__ = [
  "CNN",
  "FCN",
  "MLP",
  "MODELS",
  "NORMS",
  "POOLS",
  "CharLSTM",
  "ResNet18",
  "build",
  "stateful_collections",
  "uses_dropout",
  "validate",
]

MODELS = ("mlp", "cnn", "resnet18", "lstm", "fcn")
POOLS = ("avg", "max")  # cnn: pooling between the conv blocks
IMAGE_MODELS = ("cnn", "resnet18")  # need [B, H, W, C] inputs
TOKEN_MODELS = ("lstm",)  # need [B, T] integer inputs


class MLP(nn.Module):
  """Fully connected net: flatten -> [Dense -> ReLU] * len(hidden) -> Dense(num_classes)."""

  num_classes: int
  hidden: Sequence[int] = (64,)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = hooks.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_classes)(x)


class CNN(nn.Module):
  """Small CNN for [B, H, W, C] images: 3x3 conv + ReLU blocks (2x2 pooling between
  them: average, or max with `pool="max"`), flatten, Dense(dense) + ReLU, Dense(num_classes)."""

  num_classes: int
  channels: Sequence[int] = (16, 32)
  dense: int = 64
  pool: str = "avg"

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    for i, width in enumerate(self.channels):
      x = hooks.relu(nn.Conv(width, (3, 3), padding="SAME")(x))
      if i + 1 < len(self.channels):
        if self.pool == "max":
          x = hooks.max_pool(x, (2, 2), strides=(2, 2))
        else:
          x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = hooks.relu(nn.Dense(self.dense)(x))
    return nn.Dense(self.num_classes)(x)


def _positive_int(config: ml_collections.ConfigDict, field: str, default: int) -> int:
  value = config.get(field, default)
  check(
    isinstance(value, int) and not isinstance(value, bool) and value >= 1,
    f"model.{field}",
    value,
    "must be an integer >= 1",
  )
  return value


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` naming the field and its allowed range for a bad model config."""
  check(config.name in MODELS, "model.name", config.name, f"must be one of {MODELS}")
  if config.name == "cnn":
    pool = config.get("pool", "avg")
    check(pool in POOLS, "model.pool", pool, f"must be one of {POOLS}")
  elif config.name == "resnet18":
    norm = config.get("norm", "group")
    check(norm in NORMS, "model.norm", norm, f"must be one of {NORMS}")
    width = _positive_int(config, "width", 64)
    groups = _positive_int(config, "groups", 2)
    if norm == "group":
      check(width % groups == 0, "model.groups", groups,
            f"must divide model.width={width} (GroupNorm splits channels into groups)")  # fmt: skip
  elif config.name == "lstm":
    for field, default in (("embed_dim", 8), ("lstm_hidden", 128), ("lstm_layers", 2)):
      _positive_int(config, field, default)
  elif config.name == "fcn":
    _positive_int(config, "fcn_hidden", 500)
    rate = config.get("dropout", 0.3)
    check(
      isinstance(rate, int | float) and not isinstance(rate, bool) and 0 <= rate < 1,
      "model.dropout",
      rate,
      "must be in [0, 1)",
    )


def stateful_collections(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Variable collections besides 'params' that training updates: ("batch_stats",) or ()."""
  if config.name == "resnet18" and config.get("norm", "group") == "batch":
    return ("batch_stats",)
  return ()


def uses_dropout(config: ml_collections.ConfigDict) -> bool:
  """Whether `apply(..., train=True)` needs a 'dropout' rng."""
  return config.name == "fcn" and config.get("dropout", 0.3) > 0


def build(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """The model named by `config.name`, its fields read as listed in the module docstring."""
  validate(config)
  name = config.name
  if name == "mlp":
    return MLP(num_classes=num_classes, hidden=tuple(config.get("hidden", (64,))))
  if name == "cnn":
    return CNN(
      num_classes=num_classes,
      channels=tuple(config.get("channels", (16, 32))),
      pool=config.get("pool", "avg"),
    )
  if name == "resnet18":
    return ResNet18(
      num_classes=num_classes,
      width=config.get("width", 64),
      norm=config.get("norm", "group"),
      groups=config.get("groups", 2),
    )
  if name == "lstm":
    return CharLSTM(
      num_classes=num_classes,
      embed_dim=config.get("embed_dim", 8),
      hidden=config.get("lstm_hidden", 128),
      layers=config.get("lstm_layers", 2),
    )
  return FCN(
    num_classes=num_classes,
    hidden=config.get("fcn_hidden", 500),
    dropout=float(config.get("dropout", 0.3)),
  )

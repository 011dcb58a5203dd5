"""ResNet-18 in its CIFAR form, the paper's CV model.

He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), in the
variant for 32x32 inputs used by the FedQS reference code (`resnet_model.py`,
the widespread `kuangliu/pytorch-cifar` layout):

  stem     3x3 conv, `width` channels, stride 1, no max-pool -> norm -> ReLU
  stage s  (s = 1..4) two BasicBlocks of `width * 2**(s-1)` channels; the first
           block of stages 2-4 has stride 2 and a 1x1 conv + norm projection
           shortcut
  head     global average pool -> Dense(num_classes)

BasicBlock: conv3x3(stride) -> norm -> ReLU -> conv3x3 -> norm, plus shortcut,
then ReLU. Convolutions have no bias (the normalisation carries one); strided
3x3 convolutions pad one pixel on each side, as PyTorch's `padding=1` does.

With width 64 and 10 classes the model has 11,173,962 trainable parameters,
the count of the reference's PyTorch ResNet18 (BatchNorm running statistics
are not parameters). `norm`:

  "batch"  BatchNorm (the reference), statistics of the client's minibatch in
           training, the running averages (collection `batch_stats`, momentum
           0.9 = PyTorch's 0.1) at evaluation: `use_running_average=not train`;
  "group"  GroupNorm with `groups` groups (default 2, the common choice for
           federated learning, Hsieh et al. 2020): no state, so it is
           unaffected by non-IID client batches.

Input: [B, H, W, C] float32 images (any H, W; 32x32x3 for CIFAR). Output:
[B, num_classes] logits.

The ReLUs and BatchNorm's mode go through `hooks` (plain `nn.relu` and `not train`
outside FedSQ's dual mode, see `fedqs_jax.models.dual`).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from fedqs_jax.models import hooks

NORMS = ("group", "batch")
_PAD1 = ((1, 1), (1, 1))


def _norm(kind: str, groups: int, train: bool, name: str) -> nn.Module:
  if kind == "batch":
    return nn.BatchNorm(
      use_running_average=hooks.use_running_average(train), momentum=0.9, epsilon=1e-5, name=name
    )
  return nn.GroupNorm(num_groups=groups, epsilon=1e-5, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (projection when the shape changes)."""

  features: int
  strides: int = 1
  norm: str = "group"
  groups: int = 2

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    s = (self.strides, self.strides)
    y = nn.Conv(self.features, (3, 3), s, padding=_PAD1, use_bias=False, name="conv1")(x)
    y = hooks.relu(_norm(self.norm, self.groups, train, "norm1")(y))
    y = nn.Conv(self.features, (3, 3), padding=_PAD1, use_bias=False, name="conv2")(y)
    y = _norm(self.norm, self.groups, train, "norm2")(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), s, padding="VALID", use_bias=False, name="proj")(x)
      x = _norm(self.norm, self.groups, train, "proj_norm")(x)
    return hooks.relu(y + x)


class ResNet18(nn.Module):
  """CIFAR ResNet-18 (see the module docstring).

  Attributes:
    num_classes: size of the output layer.
    width: channels of the stem and of stage 1 (64 in the paper; e.g. 8 for
      CPU-sized smoke runs); stage s has `width * 2**(s-1)`.
    norm: "group" or "batch".
    groups: GroupNorm groups; must divide `width` (used with norm="group").
  """

  num_classes: int
  width: int = 64
  norm: str = "group"
  groups: int = 2

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = nn.Conv(self.width, (3, 3), padding=_PAD1, use_bias=False, name="stem")(x)
    x = hooks.relu(_norm(self.norm, self.groups, train, "stem_norm")(x))
    for stage in range(4):
      features = self.width * 2**stage
      for block in range(2):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(features, strides, self.norm, self.groups, name=f"stage{stage + 1}_{block}")(
          x, train
        )
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)

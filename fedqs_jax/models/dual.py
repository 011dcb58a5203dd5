"""FedSQ's dual mode: one Flax module run on a frozen structural copy and a trainable
quantitative copy (contract: `shared/spec/FEDSQ.md`).

Perez-Corral et al., "FedSQ: Optimized Weight Averaging via Fixed Gating" (2026), after
the deep-gated-network view of ReLU nets (Lakshminarayanan & Singh, NeurIPS 2020). The
structural copy (the pretrained weights, a constant of the run) decides which units are
on; the quantitative copy (trained and averaged) carries the values:

  dual_apply(module, structural_variables, variables, x)
    1. structural pass: `module.apply(stop_gradient(structural_variables), x)` with every
       ReLU recording its gate (pre-activation > 0) and every max-pool its argmax
       positions (`hooks.Tape`, call order), Dropout off; its outputs are discarded
       (XLA drops the unused part, e.g. the head);
    2. quantitative pass: `module.apply(variables, x)` with every ReLU replaced by "my
       pre-activation where the structural gate is on, else 0" and every max-pool taking
       its input at the structural argmax (`pool="structural"`, the default: the model
       stays piecewise affine with the structural copy's regions) or pooling its own
       activations (`pool="normal"`).

  The gates are booleans and the argmaxes integers computed from stop-gradient
  variables: the structural copy receives an exactly zero gradient. At initialisation
  (variables == structural_variables) the pair computes the plain model: the recorded
  gates are the plain model's ReLU decisions and `where(x > 0, x, 0)` is `relu(x)`.

BatchNorm (`resnet18` with norm="batch"), `batch_norm=`:

  "batch"   (default) both passes normalise as the plain model does for `train`: in
            training with their own minibatch statistics (the structural gates come
            from the structural copy's batch statistics of the same minibatch), at
            evaluation with their own running statistics (the structural copy's are
            the pretrained ones, the quantitative copy's are updated in training,
            returned with `mutable=["batch_stats"]` and averaged like parameters);
  "frozen"  both passes normalise with the structural copy's (pretrained) running
            statistics in training and at evaluation; the quantitative `batch_stats`
            are ignored, and with `mutable=["batch_stats"]` the pretrained ones come
            back unchanged.

  In neither mode does the structural copy change: its updated statistics (batch mode
  in training) are dropped.

Dropout (`fcn`): the structural pass runs without it (every `nn.Dropout` is the
identity there); the quantitative pass applies it as usual with `train=True` and a
'dropout' rng.

New classification head (`new_head`): the last Dense layer, whose output is the model's
output, so no ReLU follows it and it never affects a gate. `new_head` returns the module
with another `num_classes` and the parameters with a freshly initialised head; use them
for both copies. The structural copy needs a head only so that the same module applies
to it: its values are irrelevant (the structural logits are discarded), and with the same
tree for both copies the pair starts as the plain model with the new head.

Models: `mlp`, `cnn` (avg or max pooling), `resnet18` (GroupNorm or BatchNorm) and
`fcn`. `lstm` is refused (`validate_dual`): its nonlinearities are sigmoid/tanh gates and
tanh cell outputs, not ReLUs, so there are no binary gates and no fixed linear regions
for the quantitative copy to refine; fixing the LSTM's sigmoid gate values from the
structural copy would still leave the tanh nonlinearities of the quantitative path.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import ml_collections

from fedqs_jax import models
from fedqs_jax.errors import check
from fedqs_jax.models import hooks

POOL_MODES = ("structural", "normal")
BATCH_NORM_MODES = ("batch", "frozen")
DUAL_MODELS = ("mlp", "cnn", "resnet18", "fcn")


def validate_dual(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` unless the model config `config` is valid and has ReLU gates."""
  models.validate(config)
  check(
    config.name in DUAL_MODELS,
    "model.name",
    config.name,
    f"FedSQ needs a ReLU model, one of {DUAL_MODELS}: the LSTM's sigmoid/tanh gates are "
    "not binary and leave no fixed linear regions to refine",
  )


def _identity_dropout(next_fun, args, kwargs, context):
  if isinstance(context.module, nn.Dropout) and context.method_name == "__call__":
    return args[0] if args else kwargs["inputs"]
  return next_fun(*args, **kwargs)


def _check_modes(pool: str, batch_norm: str) -> None:
  if pool not in POOL_MODES:
    raise ValueError(f"pool={pool!r}: must be one of {POOL_MODES}")
  if batch_norm not in BATCH_NORM_MODES:
    raise ValueError(f"batch_norm={batch_norm!r}: must be one of {BATCH_NORM_MODES}")


def _record(module, structural_variables, x, train, rngs, batch_norm) -> hooks.Tape:
  """The structural pass: the tape of its gates (see the module docstring)."""
  structural = jax.lax.stop_gradient(structural_variables)
  tape = hooks.Tape(hooks.RECORD, frozen=batch_norm == "frozen")
  # BatchNorm in training writes its statistics: let it, and drop them.
  state = [c for c in structural if c != "params"]
  with hooks.active(tape), nn.intercept_methods(_identity_dropout):
    module.apply(structural, x, train=train, rngs=rngs, mutable=state)
  return tape


def gates(
  module: nn.Module,
  structural_variables,
  x,
  *,
  train: bool = False,
  rngs=None,
  batch_norm: str = "batch",
) -> list[tuple[str, jax.Array]]:
  """The structural copy's gates on `x`, in call order: ("relu", bool mask of the
  pre-activation's shape) and ("max_pool", int32 window offset of each pooled output)."""
  _check_modes("structural", batch_norm)
  return list(_record(module, structural_variables, x, train, rngs, batch_norm).entries)


def dual_apply(
  module: nn.Module,
  structural_variables,
  variables,
  x,
  *,
  train: bool = False,
  rngs=None,
  mutable: Any = False,
  pool: str = "structural",
  batch_norm: str = "batch",
):
  """`module.apply(variables, x, train=..., rngs=..., mutable=...)` in FedSQ's dual mode,
  gated by `structural_variables` (same tree structure; see the module docstring).

  Returns what `module.apply` returns: the logits, or (logits, updated collections)
  with `mutable`.
  """
  _check_modes(pool, batch_norm)
  tape = _record(module, structural_variables, x, train, rngs, batch_norm)
  tape.mode, tape.reuse_pool = hooks.REPLAY, pool == "structural"
  if batch_norm == "frozen" and "batch_stats" in structural_variables:
    variables = {
      **variables,
      "batch_stats": jax.lax.stop_gradient(structural_variables["batch_stats"]),
    }
  with hooks.active(tape):
    out = module.apply(variables, x, train=train, rngs=rngs, mutable=mutable)
  if tape.position != len(tape.entries):
    raise RuntimeError(
      f"FedSQ replay used {tape.position} of the {len(tape.entries)} recorded gates: the two "
      "passes must run the same module"
    )
  return out


def head_path(module: nn.Module, x) -> tuple[str, ...]:
  """The path of `module`'s classification head: the last `nn.Dense` it calls, checked to
  produce the model's output (so no ReLU follows it). Traced with `jax.eval_shape`."""
  calls = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
      calls.append((context.module.path, out))
    return out

  def init(key):
    with nn.intercept_methods(record):
      out, _ = module.init_with_output(key, x)
    if not calls or calls[-1][1] is not out:
      raise ValueError(f"{type(module).__name__}'s output is not the output of a Dense layer")
    return out

  jax.eval_shape(init, jax.random.PRNGKey(0))
  return tuple(calls[-1][0])


def new_head(module: nn.Module, params, num_classes: int, key, x) -> tuple[nn.Module, Any]:
  """(`module` with `num_classes` outputs, `params` with a fresh head of that width).

  The head is `head_path(module, x)`, initialised as `module.clone(num_classes=...)`
  initialises it from `key` (`x`: an example batch, for the shapes); every other
  parameter is kept. Use the result for both copies of `dual_apply` (module docstring).
  """
  path = head_path(module, x)
  clone = module.clone(num_classes=num_classes)

  @jax.jit
  def fresh(key):  # only the head's initialisation survives dead-code elimination
    tree = clone.init(key, x)["params"]
    for name in path:
      tree = tree[name]
    return tree

  def replace(tree, names, value):
    if not names:
      return value
    return {**tree, names[0]: replace(tree[names[0]], names[1:], value)}

  return clone, replace(params, path, fresh(key))

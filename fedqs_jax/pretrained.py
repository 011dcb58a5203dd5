"""Pretrained models: central pretraining's checkpoints, and warm starts from them.

`experiments.pretrain` trains a model centrally on a source task and `save`s it: an
orbax checkpoint of the model's variables (the pytree the engine trains: 'params', or
'params' and 'batch_stats') in `DIR/variables`, and `DIR/model.json` with the model
config and class count it came from. Any run starts from such a folder with
`--config.model.init_checkpoint=DIR` (`warm_start`), every algorithm of a comparison
from the same weights; a different class count gets a fresh classification head (drawn
per seed), and any other difference of shapes is refused before anything compiles,
naming the differing parameters.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from fedqs_jax import io
from fedqs_jax.errors import ConfigError, check

FIELD = "model.init_checkpoint"
METADATA = "model.json"
VARIABLES = "variables"


def save(folder: str, variables: Any, model_config: ml_collections.ConfigDict, num_classes: int,
         source: dict) -> None:  # fmt: skip
  """Writes `variables` and their metadata (model config, class count, `source`) to `folder`."""
  folder = os.path.abspath(folder)
  os.makedirs(folder, exist_ok=True)
  target = os.path.join(folder, VARIABLES)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(target, jax.device_get(variables), force=True)
  io.write_json(
    os.path.join(folder, METADATA),
    {"model": model_config.to_dict(), "num_classes": num_classes, "source": source},
  )


def metadata(folder: str) -> dict:
  """The `model.json` of a checkpoint folder; `ConfigError` if it is not one."""
  check(bool(folder) and os.path.isdir(folder), FIELD, folder,
        "must be a folder written by experiments.pretrain")  # fmt: skip
  path = os.path.join(folder, METADATA)
  check(os.path.isfile(path) and os.path.isdir(os.path.join(folder, VARIABLES)), FIELD, folder,
        f"holds no pretrained model ({METADATA} and {VARIABLES}/ are missing): "
        "write one with python -m experiments.pretrain")  # fmt: skip
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"{FIELD}={folder!r} is invalid: {METADATA} is unreadable ({e})") from None


def _shapes(tree) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): tuple(np.shape(x)) for path, x in leaves}


def load(folder: str, like: Any, head: tuple[str, ...] = ()) -> Any:
  """The variables saved in `folder`, checked against the shapes of `like` (the run's
  model: arrays or `ShapeDtypeStruct`s). Parameters under the `head` path may differ in
  shape (a new classification head): those come back as `like`'s `ShapeDtypeStruct`s.

  Raises:
    ConfigError: not a checkpoint folder, or another parameter differs in shape.
  """
  metadata(folder)
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(os.path.join(os.path.abspath(folder), VARIABLES))
  ours, theirs = _shapes(like), _shapes(restored)
  prefix = "".join(f"['{name}']" for name in head)
  in_head = lambda name: bool(head) and prefix in name  # noqa: E731
  differing = sorted(
    f"{name}: {theirs.get(name, 'missing')} in the checkpoint, {ours.get(name, 'missing')} here"
    for name in set(ours) | set(theirs)
    if ours.get(name) != theirs.get(name) and not (in_head(name) and name in ours)
  )
  check(not differing, FIELD, folder,
        "its model differs from this run's model.* in these parameters: "
        + "; ".join(differing[:4]) + (" ..." if len(differing) > 4 else ""))  # fmt: skip
  return _merge(like, restored)


def _merge(like: Any, restored: Any) -> Any:
  """`restored` where its leaf shape matches `like`'s, else `like`'s leaf (the new head)."""
  if isinstance(like, dict):
    return {k: _merge(v, restored[k]) for k, v in like.items()}
  if tuple(np.shape(restored)) == tuple(like.shape):
    return jax.numpy.asarray(restored, like.dtype)
  return jax.ShapeDtypeStruct(like.shape, like.dtype)


def warm_start(folder: str, init: Callable, sample, head: tuple[str, ...]) -> tuple[Callable, Any]:
  """(`init(key, x)` returning the pretrained variables, with a fresh head drawn from
  `key` where the class count differs; those variables for key 0).

  `init` is the model's own initialiser and `head` its classification head's path.
  """
  pretrained = load(folder, jax.eval_shape(init, jax.random.PRNGKey(0), sample), head)

  def warm_init(key, x):
    fresh = init(key, x)
    keep = lambda f, p: f if isinstance(p, jax.ShapeDtypeStruct) else p  # noqa: E731
    return jax.tree.map(keep, fresh, pretrained)

  return warm_init, warm_init(jax.random.PRNGKey(0), sample)

"""Tests of FedSQ's dual mode (`fedqs_jax.models.dual`): the pair equals the plain model at
initialisation, the structural copy alone decides the gates and gets no gradient, max-pool
reuses the structural argmax, BatchNorm and Dropout modes, a new head, LSTM refused."""

from __future__ import annotations

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fedqs_jax import models
from fedqs_jax.errors import ConfigError
from fedqs_jax.models import dual, hooks

# name: (model config, input shape); 10 classes.
CASES = {
  "mlp": ({"name": "mlp", "hidden": (16, 8)}, (4, 8, 8, 1)),
  "cnn_avg": ({"name": "cnn", "channels": (4, 8)}, (4, 8, 8, 1)),
  "cnn_max": ({"name": "cnn", "channels": (4, 8), "pool": "max"}, (4, 8, 8, 1)),
  "fcn": ({"name": "fcn", "fcn_hidden": 16, "dropout": 0.0}, (4, 11)),
  "resnet_group": ({"name": "resnet18", "width": 8, "norm": "group"}, (4, 8, 8, 3)),
  "resnet_batch": ({"name": "resnet18", "width": 8, "norm": "batch"}, (4, 8, 8, 3)),
}


@functools.cache
def _setup(case: str):
  """(module, variables, x) of a case; BatchNorm's running statistics are random (as if
  pretrained), not the init's 0 and 1."""
  fields, shape = CASES[case]
  module = models.build(ml_collections.ConfigDict(fields), 10)
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  if case == "resnet_group":  # GroupNorm has BatchNorm's parameters: one ResNet init
    return module, {"params": _setup("resnet_batch")[1]["params"]}, x
  variables = jax.jit(module.init)(jax.random.PRNGKey(0), x)
  if "batch_stats" in variables:
    mean, var = jax.random.split(jax.random.PRNGKey(2))
    stats = jax.tree_util.tree_map_with_path(
      lambda path, a: (
        0.3 * jax.random.normal(mean, a.shape)
        if path[-1].key == "mean"
        else jax.random.uniform(var, a.shape, minval=0.5, maxval=2.0)
      ),
      variables["batch_stats"],
    )
    variables = {**variables, "batch_stats": stats}
  return module, variables, x


def _perturb(tree, key, scale=0.3):
  """`tree` with relative Gaussian noise on every floating leaf."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  noisy = [
    leaf * (1 + scale * jax.random.normal(k, leaf.shape))
    for leaf, k in zip(leaves, keys, strict=True)
  ]
  return jax.tree.unflatten(treedef, noisy)


def _mutable(variables):
  return [c for c in variables if c != "params"] or False


@contextlib.contextmanager
def _spy(monkeypatch):
  """Records, in the quantitative (replay) pass, the ReLU outputs' nonzero masks (the
  gates actually applied) and the max-pools' outputs, in call order."""
  seen = {"relu": [], "max_pool": []}
  relu, max_pool = hooks.relu, hooks.max_pool

  def replaying():
    tape = hooks._TAPE.get()
    return tape is not None and tape.mode == hooks.REPLAY

  def spy_relu(x):
    out = relu(x)
    if replaying():
      seen["relu"].append(out != 0)
    return out

  def spy_pool(x, *args, **kwargs):
    out = max_pool(x, *args, **kwargs)
    if replaying():
      seen["max_pool"].append((x, out))
    return out

  monkeypatch.setattr(hooks, "relu", spy_relu)
  monkeypatch.setattr(hooks, "max_pool", spy_pool)
  yield seen


@pytest.mark.parametrize(
  "case,train",
  [("mlp", False), ("cnn_avg", False), ("cnn_max", False), ("fcn", False), ("fcn", True),
   ("resnet_group", False), ("resnet_group", True), ("resnet_batch", False),
   ("resnet_batch", True)],
)  # fmt: skip
def test_dual_equals_plain_model_at_initialisation(case, train):
  """Structural == quantitative: the pair computes the plain model, bit for bit (also the
  updated BatchNorm statistics), in both pooling modes."""
  module, variables, x = _setup(case)
  kw = dict(train=train, rngs={"dropout": jax.random.PRNGKey(3)}, mutable=_mutable(variables))
  pools = dual.POOL_MODES if case == "cnn_max" else ("structural",)

  @jax.jit
  def both(v):
    return module.apply(v, x, **kw), [dual.dual_apply(module, v, v, x, pool=p, **kw) for p in pools]

  plain, paired = both(variables)
  for out in paired:
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(out), strict=True):
      np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", ["cnn_max", "resnet_batch"])
def test_structural_copy_gets_no_gradient(case):
  module, variables, x = _setup(case)
  q = _perturb(variables, jax.random.PRNGKey(5))
  y = jnp.arange(x.shape[0]) % 10

  @jax.jit
  def grads(s, q):
    def loss(s, q):
      out, _ = dual.dual_apply(module, s, q, x, train=True, mutable=["batch_stats"])
      return -jnp.take_along_axis(jax.nn.log_softmax(out), y[:, None], 1).mean()

    return jax.grad(loss, argnums=(0, 1))(s, q)

  gs, gq = grads(variables, q)
  for leaf in jax.tree.leaves(gs):
    np.testing.assert_array_equal(leaf, np.zeros_like(leaf))
  for leaf in jax.tree.leaves(gq["params"]):
    assert float(jnp.abs(leaf).sum()) > 0  # every layer of the quantitative copy learns


@pytest.mark.parametrize("case,train", [("mlp", False), ("cnn_max", False), ("resnet_batch", True)])
def test_gates_come_from_the_structural_copy(case, train, monkeypatch):
  """The gates applied in the quantitative pass are the structural copy's ReLU decisions:
  unchanged when the quantitative copy changes, changed when the structural copy does."""
  module, variables, x = _setup(case)
  moved = _perturb(variables, jax.random.PRNGKey(6))
  with _spy(monkeypatch) as seen:

    @jax.jit
    def applied(s, q):
      seen["relu"].clear()
      dual.dual_apply(module, s, q, x, train=train, mutable=_mutable(q))
      return list(seen["relu"])

    base, quantitative_moved, structural_moved = (
      applied(variables, variables), applied(variables, moved), applied(moved, variables)
    )  # fmt: skip
  recorded = [g for kind, g in dual.gates(module, variables, x, train=train) if kind == "relu"]
  assert len(base) == len(recorded) > 0
  for a, b, c in zip(base, quantitative_moved, recorded, strict=True):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
  assert any(not np.array_equal(a, b) for a, b in zip(base, structural_moved, strict=True))


def test_mlp_dual_forward_by_hand():
  """out = W3 (g2 * (W2 (g1 * (W1 x + b1)) + b2)) + b3 with g the structural copy's gates."""
  module, variables, x = _setup("mlp")
  s, q = variables["params"], _perturb(variables, jax.random.PRNGKey(7))["params"]
  h = x.reshape(x.shape[0], -1)
  hs, hq = h, h
  for layer in ("Dense_0", "Dense_1"):
    pre_s = hs @ s[layer]["kernel"] + s[layer]["bias"]
    pre_q = hq @ q[layer]["kernel"] + q[layer]["bias"]
    hs, hq = jnp.maximum(pre_s, 0), jnp.where(pre_s > 0, pre_q, 0)
  expected = hq @ q["Dense_2"]["kernel"] + q["Dense_2"]["bias"]
  got = dual.dual_apply(module, {"params": s}, {"params": q}, x)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  assert not np.allclose(module.apply({"params": q}, x), expected, atol=1e-3)


def test_max_pool_takes_the_structural_argmax(monkeypatch):
  """With a perturbed quantitative copy, each pooled value is the quantitative pre-pool
  activation at the position of the structural window maximum (computed here by reshape),
  not the quantitative maximum; pool="normal" pools the quantitative activations."""
  module, variables, x = _setup("cnn_max")
  q = _perturb(variables, jax.random.PRNGKey(8), scale=1.0)
  conv = nn.Conv(4, (3, 3), padding="SAME")
  pre_s = conv.apply({"params": variables["params"]["Conv_0"]}, x)
  pre_q = conv.apply({"params": q["params"]["Conv_0"]}, x)
  act_s, act_q = jnp.maximum(pre_s, 0), jnp.where(pre_s > 0, pre_q, 0)

  def windows(a):  # [B, H/2, W/2, C, 4], offsets (0,0), (0,1), (1,0), (1,1)
    b, h, w, c = a.shape
    return (
      a.reshape(b, h // 2, 2, w // 2, 2, c)
      .transpose(0, 1, 3, 5, 2, 4)
      .reshape(b, h // 2, w // 2, c, 4)
    )

  argmax = jnp.argmax(windows(act_s), -1)
  expected = jnp.take_along_axis(windows(act_q), argmax[..., None], -1)[..., 0]
  with _spy(monkeypatch) as seen:
    dual.dual_apply(module, variables, q, x)
    dual.dual_apply(module, variables, q, x, pool="normal")
  (pool_in, pooled), (_, pooled_normal) = seen["max_pool"]
  np.testing.assert_allclose(pool_in, act_q, rtol=1e-6, atol=1e-6)
  at_argmax = jnp.take_along_axis(windows(pool_in), argmax[..., None], -1)[..., 0]
  np.testing.assert_array_equal(pooled, at_argmax)
  np.testing.assert_allclose(pooled, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(pooled_normal, windows(pool_in).max(-1))
  assert not np.allclose(pooled, pooled_normal)  # the two modes differ here
  (kind, recorded), *_ = [e for e in dual.gates(module, variables, x) if e[0] == "max_pool"]
  np.testing.assert_array_equal(recorded, argmax)


def test_max_pool_hook_with_padding_and_overlap():
  """The hook's windows match `nn.max_pool` for SAME padding and overlapping windows."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 5, 3))
  for window, strides, padding in [((3, 3), (2, 2), "SAME"), ((2, 3), (1, 2), "VALID"),
                                   ((3, 2), (2, 1), ((1, 1), (0, 1)))]:  # fmt: skip
    expected = nn.max_pool(x, window, strides, padding)
    tape = hooks.Tape(hooks.RECORD)
    with hooks.active(tape):
      np.testing.assert_array_equal(hooks.max_pool(x, window, strides, padding), expected)
    tape.mode = hooks.REPLAY
    with hooks.active(tape):
      np.testing.assert_array_equal(hooks.max_pool(x, window, strides, padding), expected)


def test_dual_is_affine_in_a_quantitative_layer():
  """Gates fixed: the dual MLP is affine in its first layer's kernel (along any line),
  which the plain MLP, whose gates move with the kernel, is not."""
  module, variables, x = _setup("mlp")
  shape = variables["params"]["Dense_0"]["kernel"].shape
  direction = jax.random.normal(jax.random.PRNGKey(9), shape)

  def along(t, fn):
    p = variables["params"]
    q = {**p, "Dense_0": {**p["Dense_0"], "kernel": p["Dense_0"]["kernel"] + t * direction}}
    return fn({"params": q})

  dual_fn = lambda q: dual.dual_apply(module, variables, q, x)  # noqa: E731
  plain_fn = lambda q: module.apply(q, x)  # noqa: E731
  f0, f1, f2 = (along(t, dual_fn) for t in (0.0, 1.0, 2.0))
  np.testing.assert_allclose(f1 - f0, (f2 - f0) / 2, rtol=1e-4, atol=1e-4)
  p0, p1, p2 = (along(t, plain_fn) for t in (0.0, 1.0, 2.0))
  assert not np.allclose(p1 - p0, (p2 - p0) / 2, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["mlp", "cnn_max"])
def test_vmap_over_quantitative_copies_equals_a_loop(case):
  module, variables, x = _setup(case)
  copies = [_perturb(variables, jax.random.PRNGKey(k)) for k in range(3)]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *copies)
  step = lambda q: dual.dual_apply(module, variables, q, x, train=True, mutable=_mutable(q))  # noqa: E731
  batched = jax.jit(jax.vmap(step))(stacked)
  single = jax.jit(step)
  for i, q in enumerate(copies):
    for a, b in zip(jax.tree.leaves(single(q)), jax.tree.leaves(batched), strict=True):
      np.testing.assert_allclose(a, b[i], rtol=1e-5, atol=1e-5)


def test_batch_norm_modes(monkeypatch):
  """batch: the quantitative copy's own statistics (updated in training, its running ones
  at evaluation), gates from the structural copy's; frozen: the pretrained running
  statistics in both passes, in training too, and never updated."""
  module, variables, x = _setup("resnet_batch")
  q = {**variables, "batch_stats": _perturb(variables["batch_stats"], jax.random.PRNGKey(11))}
  apply = functools.partial(dual.dual_apply, module)
  # batch, evaluation: the quantitative running statistics matter, not for the gates.
  with _spy(monkeypatch) as seen:
    dual.dual_apply(module, variables, variables, x)
    dual.dual_apply(module, variables, q, x)
  half = len(seen["relu"]) // 2
  for a, b in zip(seen["relu"][:half], seen["relu"][half:], strict=True):
    np.testing.assert_array_equal(a, b)
  assert not np.allclose(apply(variables, q, x), module.apply(variables, x))
  # batch, training: the updated statistics are the quantitative copy's, as in plain training.
  _, state = apply(variables, q, x, train=True, mutable=["batch_stats"])
  _, plain_state = module.apply(q, x, train=True, mutable=["batch_stats"])
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(plain_state), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  # frozen: training normalises like evaluation, with the structural (pretrained) statistics.
  evaluated = module.apply(variables, x)
  out, state = apply(variables, q, x, train=True, mutable=["batch_stats"], batch_norm="frozen")
  np.testing.assert_array_equal(out, apply(variables, variables, x, batch_norm="frozen"))
  np.testing.assert_allclose(out, evaluated, rtol=1e-6, atol=1e-6)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(variables["batch_stats"]), strict=True):
    np.testing.assert_array_equal(a, b)
  assert not np.allclose(module.apply(variables, x, train=True, mutable=["batch_stats"])[0], out)


class _DropoutBetweenReLUs(nn.Module):
  """Dense -> ReLU -> Dropout(0.5) -> Dense -> ReLU -> Dense: dropout precedes a gate."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = hooks.relu(nn.Dense(16)(x))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    x = hooks.relu(nn.Dense(16)(x))
    return nn.Dense(3)(x)


def test_structural_gates_ignore_dropout_quantitative_pass_applies_it():
  module = _DropoutBetweenReLUs()
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 5))
  variables = module.init(jax.random.PRNGKey(1), x)
  rngs = lambda k: {"dropout": jax.random.PRNGKey(k)}  # noqa: E731
  evaluated = dual.gates(module, variables, x)
  for k in (2, 3):
    trained = dual.gates(module, variables, x, train=True, rngs=rngs(k))
    for (_, a), (_, b) in zip(evaluated, trained, strict=True):
      np.testing.assert_array_equal(a, b)
  a, b = (
    dual.dual_apply(module, variables, variables, x, train=True, rngs=rngs(k)) for k in (2, 3)
  )
  assert not np.allclose(a, b)  # the quantitative pass drops units
  evaluated = dual.dual_apply(module, variables, variables, x)
  np.testing.assert_array_equal(evaluated, module.apply(variables, x))
  # The paper's FCN with dropout: at initialisation dual == plain training step, same rng.
  fcn = models.build(ml_collections.ConfigDict({"name": "fcn", "fcn_hidden": 16}), 2)
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 11))
  v = fcn.init(jax.random.PRNGKey(1), x)
  trained = dual.dual_apply(fcn, v, v, x, train=True, rngs=rngs(4))
  np.testing.assert_array_equal(trained, fcn.apply(v, x, train=True, rngs=rngs(4)))


@pytest.mark.parametrize("case", ["mlp", "fcn"])
def test_new_head(case):
  """A fresh 5-way head on the pretrained body; the head never reaches a gate."""
  module, variables, x = _setup(case)
  path = dual.head_path(module, x)
  assert path == {"mlp": ("Dense_2",), "fcn": ("head",)}[case]
  clone, params = dual.new_head(module, variables["params"], 5, jax.random.PRNGKey(4), x)
  assert clone.num_classes == 5 and params[path[0]]["kernel"].shape[-1] == 5
  fresh = clone.init(jax.random.PRNGKey(4), x)["params"][path[0]]
  for a, b in zip(jax.tree.leaves(params[path[0]]), jax.tree.leaves(fresh), strict=True):
    np.testing.assert_array_equal(a, b)  # the clone's own initialisation of its head
  for name in variables["params"]:
    if name != path[0]:
      old = variables["params"][name]
      for a, b in zip(jax.tree.leaves(params[name]), jax.tree.leaves(old), strict=True):
        np.testing.assert_array_equal(a, b)
  new = {**variables, "params": params}
  np.testing.assert_array_equal(dual.dual_apply(clone, new, new, x), clone.apply(new, x))
  for (_, a), (_, b) in zip(
    dual.gates(clone, new, x), dual.gates(module, variables, x), strict=True
  ):
    np.testing.assert_array_equal(a, b)


def test_head_path_needs_a_dense_output():
  class ReLUOut(nn.Module):
    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train=False):
      return hooks.relu(nn.Dense(self.num_classes)(x))

  with pytest.raises(ValueError, match="not the output of a Dense"):
    dual.head_path(ReLUOut(), jnp.ones((2, 4)))


def test_validate_dual():
  for fields in CASES.values():
    dual.validate_dual(ml_collections.ConfigDict(fields[0]))
  with pytest.raises(ConfigError, match="model.name='lstm' is invalid: FedSQ needs a ReLU"):
    dual.validate_dual(ml_collections.ConfigDict({"name": "lstm"}))
  with pytest.raises(ConfigError, match="model.pool"):
    dual.validate_dual(ml_collections.ConfigDict({"name": "cnn", "pool": "min"}))
  module, variables, x = _setup("mlp")
  with pytest.raises(ValueError, match="pool='max'"):
    dual.dual_apply(module, variables, variables, x, pool="max")
  with pytest.raises(ValueError, match="batch_norm='running'"):
    dual.dual_apply(module, variables, variables, x, batch_norm="running")

"""Tests of the models: the paper's architectures, the train/eval contract, vmapped clients."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from fedqs_jax import config as config_lib
from fedqs_jax import models
from fedqs_jax.errors import ConfigError
from tests.common import tiny_config


def _model(name: str, **fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"name": name, **fields})


def _count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


# Small inputs per paper model: (model config, num_classes, batch of inputs).
CASES = {
  "resnet18_group": (
    _model("resnet18", width=4, norm="group", groups=2),
    10,
    jnp.ones((3, 8, 8, 3)),
  ),
  "resnet18_batch": (_model("resnet18", width=4, norm="batch"), 10, jnp.ones((3, 8, 8, 3))),
  "lstm": (_model("lstm", lstm_hidden=16), 80, jnp.ones((3, 12), jnp.int32)),
  "fcn": (_model("fcn", fcn_hidden=32), 2, jnp.ones((3, 11))),
}


def _inputs(case: str, key) -> jnp.ndarray:
  _, classes, x = CASES[case]
  if x.dtype == jnp.int32:
    return jax.random.randint(key, x.shape, 0, classes, jnp.int32)
  return jax.random.normal(key, x.shape)


@pytest.mark.parametrize(
  "config,x",
  [(_model("mlp", hidden=(8,)), jnp.ones((3, 8, 8, 1))),
   (_model("cnn", channels=(4, 8)), jnp.ones((3, 8, 8, 1)))],
)  # fmt: skip
def test_older_models_take_the_train_flag(config, x):
  """mlp and cnn (no dropout, no normalisation) ignore `train`; vmapped in test_engine."""
  module = models.build(config, 10)
  params = module.init(jax.random.PRNGKey(0), x)["params"]
  np.testing.assert_array_equal(
    module.apply({"params": params}, x, train=True), module.apply({"params": params}, x)
  )
  assert models.stateful_collections(config) == () and not models.uses_dropout(config)


@pytest.mark.parametrize("case", list(CASES))
def test_forward_backward_vmapped_over_two_clients(case):
  """Per-client gradients under vmap: shapes, finite values, clients independent."""
  config, classes, _ = CASES[case]
  module = models.build(config, classes)
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  x = jnp.stack([_inputs(case, keys[0]), _inputs(case, keys[1])])  # [2 clients, B, ...]
  y = jnp.array([[0, 1, 1], [1, 0, 1]])
  variables = jax.jit(module.init)(keys[2], x[0])
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  assert set(state) == set(models.stateful_collections(config))

  def loss(p, xb, yb, rng):
    out = module.apply({"params": p, **state}, xb, train=True, rngs={"dropout": rng},
                       mutable=list(state) or False)  # fmt: skip
    logits = out[0] if state else out
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  # Two clients start from different models (as after different local steps).
  stacked = jax.jit(lambda p: jax.tree.map(lambda a: jnp.stack([a, a * 0.9]), p))(params)
  rngs = jax.random.split(keys[3], 2)
  vmapped_grad = jax.jit(jax.vmap(jax.grad(loss)))
  grads = vmapped_grad(stacked, x, y, rngs)
  for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params), strict=True):
    assert g.shape == (2, *p.shape) and bool(jnp.all(jnp.isfinite(g)))
  assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads))) > 0
  # Clients do not interact (no statistics pooled over the client axis): swapping the two
  # clients' models, data and rngs swaps their gradients (same compiled program).
  swap = lambda tree: jax.tree.map(lambda a: a[::-1], tree)  # noqa: E731
  swapped = vmapped_grad(jax.jit(swap)(stacked), x[::-1], y[::-1], rngs[::-1])
  for g, h in zip(jax.tree.leaves(grads), jax.tree.leaves(swapped), strict=True):
    np.testing.assert_allclose(g, h[::-1], rtol=1e-5, atol=1e-6)
  assert not np.allclose(jax.tree.leaves(grads)[0][0], jax.tree.leaves(grads)[0][1])
  logits = module.apply(variables, x[0])  # the evaluation call: train defaults to False
  assert logits.shape == (3, classes) and bool(jnp.all(jnp.isfinite(logits)))
  # Evaluation is per example (BatchNorm normalises with its running averages): changing
  # the rest of the batch leaves an example's logits alone.
  other = module.apply(variables, x[0].at[1:].set(x[1][1:]))
  np.testing.assert_allclose(other[0], logits[0], rtol=1e-5, atol=1e-5)
  assert not np.allclose(other[1:], logits[1:])
  if not state:  # the engine's current call, `apply({"params": p}, x)`, is that evaluation
    np.testing.assert_array_equal(module.apply({"params": params}, x[0]), logits)


def test_batchnorm_statistics():
  config, classes, _ = CASES["resnet18_batch"]
  module = models.build(config, classes)
  x = _inputs("resnet18_batch", jax.random.PRNGKey(0)) * 3.0 + 1.0
  variables = jax.jit(module.init)(jax.random.PRNGKey(1), x)
  stats = variables["batch_stats"]
  assert set(stats["stem_norm"]) == {"mean", "var"}
  # 1 stem + 4 stages x 2 blocks x 2 norms + 3 projection norms = 20 BatchNorms.
  assert len(jax.tree.leaves(stats)) == 2 * 20
  train_out, updated = module.apply(variables, x, train=True, mutable=["batch_stats"])
  before, after = stats["stem_norm"]["mean"], updated["batch_stats"]["stem_norm"]["mean"]
  assert not np.allclose(before, after)  # training moves the running averages
  # In training an example's logits depend on the rest of its batch (batch statistics);
  # at evaluation they do not (see the vmap test).
  train_one, _ = module.apply(variables, x[:1], train=True, mutable=["batch_stats"])
  assert not np.allclose(train_one, train_out[:1], atol=1e-3)
  with pytest.raises(Exception, match="batch_stats"):  # running stats are required to apply
    module.apply({"params": variables["params"]}, x)


def test_dropout_only_in_training():
  module = models.build(_model("fcn"), 2)
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 11))
  params = module.init(jax.random.PRNGKey(1), x)["params"]
  evaluated = module.apply({"params": params}, x)
  key = jax.random.PRNGKey(5)
  again = module.apply({"params": params}, x, train=False, rngs={"dropout": key})
  np.testing.assert_array_equal(evaluated, again)
  a = module.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  b = module.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
  assert not np.allclose(a, evaluated) and not np.allclose(a, b)
  with pytest.raises(Exception, match="dropout"):  # training needs the 'dropout' rng
    module.apply({"params": params}, x, train=True)
  # The dropped share of hidden units is the rate, 0.3.
  rngs = {"dropout": jax.random.PRNGKey(4)}
  _, inter = module.apply({"params": params}, x, train=True, rngs=rngs, capture_intermediates=True)
  hidden = nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
  dropped = np.asarray(inter["intermediates"]["dropout"]["__call__"][0]) == 0
  alive = np.asarray(hidden) > 0
  assert abs(dropped[alive].mean() - 0.3) < 0.03
  no_dropout = models.build(_model("fcn", dropout=0.0), 2)
  np.testing.assert_allclose(
    no_dropout.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)}),
    evaluated,
    rtol=1e-6,
  )
  assert models.uses_dropout(_model("fcn")) and not models.uses_dropout(_model("fcn", dropout=0.0))


def test_resnet18_matches_the_paper():
  """CIFAR ResNet-18, width 64: 11,173,962 parameters (the reference's PyTorch count),
  a 3x3 stem without max-pool (32x32 maps in stage 1), 4x4 maps in stage 4."""
  for norm in ("group", "batch"):
    module = models.build(_model("resnet18", norm=norm), 10)
    x = jnp.zeros((1, 32, 32, 3))
    variables = jax.eval_shape(
      lambda module=module, x=x: module.init(jax.random.PRNGKey(0), x, capture_intermediates=True)
    )
    assert _count(variables["params"]) == 11_173_962
    shapes = variables["intermediates"]
    assert shapes["stem"]["__call__"][0].shape == (1, 32, 32, 64)
    assert shapes["stage1_1"]["__call__"][0].shape == (1, 32, 32, 64)
    assert shapes["stage4_1"]["__call__"][0].shape == (1, 4, 4, 512)
    assert variables["params"]["stem"]["kernel"].shape == (3, 3, 3, 64)
  cifar100 = models.build(_model("resnet18"), 100)
  variables = jax.eval_shape(
    lambda: cifar100.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  )
  assert _count(variables["params"]) == 11_173_962 + 512 * 90 + 90  # a 100-way head


def test_lstm_matches_the_paper():
  """Embed(80, 8) -> 2 x LSTM(128) -> Dense(256 -> 80): 222,928 parameters, which is the
  reference's PyTorch count 223,952 less its redundant second bias per layer (2 x 512)."""
  module = models.build(_model("lstm"), 80)
  params = jax.eval_shape(
    lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 80), jnp.int32))
  )["params"]
  assert _count(params) == 222_928 == 223_952 - 2 * 4 * 128
  assert params["embed"]["embedding"].shape == (80, 8)
  assert params["head"]["kernel"].shape == (256, 80)


def test_lstm_head_reads_both_layers_last_hidden_states():
  """The logits equal Dense([h1_T, h2_T]) of a step-by-step loop over the same cells."""
  module = models.build(_model("lstm", lstm_hidden=16), 80)
  x = jax.random.randint(jax.random.PRNGKey(0), (2, 7), 0, 80, jnp.int32)
  params = jax.jit(module.init)(jax.random.PRNGKey(1), x)["params"]

  @jax.jit
  def step_by_step(params, x):
    h = params["embed"]["embedding"][x]  # [B, T, 8]
    finals = []
    for layer in ("lstm1", "lstm2"):
      cell = nn.OptimizedLSTMCell(16)
      carry = (jnp.zeros((h.shape[0], 16)), jnp.zeros((h.shape[0], 16)))  # (c, h)
      outputs = []
      for t in range(h.shape[1]):
        carry, out = cell.apply({"params": params[layer]}, carry, h[:, t])
        outputs.append(out)
      h = jnp.stack(outputs, axis=1)
      finals.append(carry[1])
    return jnp.concatenate(finals, -1) @ params["head"]["kernel"] + params["head"]["bias"]

  np.testing.assert_allclose(
    jax.jit(module.apply)({"params": params}, x), step_by_step(params, x), rtol=1e-4, atol=1e-5
  )


def test_fcn_matches_the_paper():
  module = models.build(_model("fcn"), 2)
  params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 11)))["params"]
  assert _count(params) == 7_002
  assert params["hidden"]["kernel"].shape == (11, 500)
  assert params["head"]["kernel"].shape == (500, 2)


@pytest.mark.parametrize(
  "fields,field",
  [
    ({"name": "vgg"}, "model.name"),
    ({"name": "resnet18", "norm": "layer"}, "model.norm"),
    ({"name": "resnet18", "width": 6, "groups": 4}, "model.groups"),
    ({"name": "resnet18", "width": 0}, "model.width"),
    ({"name": "lstm", "lstm_hidden": 0}, "model.lstm_hidden"),
    ({"name": "fcn", "dropout": 1.0}, "model.dropout"),
  ],
)
def test_model_validation(fields, field):
  with pytest.raises(ConfigError, match=field):
    models.validate(ml_collections.ConfigDict(fields))


@pytest.mark.parametrize(
  "model,dataset,ok",
  [("resnet18", "digits", True), ("resnet18", "adult", False), ("lstm", "digits", False),
   ("mlp", "shakespeare", False), ("lstm", "shakespeare", True), ("fcn", "adult", True)],
)  # fmt: skip
def test_model_and_data_must_fit(model, dataset, ok):
  partitions = {"shakespeare": "role", "adult": "gender"}
  config = tiny_config(**{"model.name": model, "data.name": dataset,
                          "data.partition": partitions.get(dataset, "dirichlet")})  # fmt: skip
  if ok:
    config_lib.validate(config)
  else:
    with pytest.raises(ConfigError, match="model.name"):
      config_lib.validate(config)

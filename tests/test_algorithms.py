"""The algorithm contract, checked for every registered algorithm, and each one's formula."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from experiments.configs import default
from fedqs_jax import algorithms
from fedqs_jax.algorithms import Arrivals, Broadcast

K = 5


def params_like(seed: int, lead=()):
  rng = np.random.default_rng(seed)
  return {
    "dense": {"kernel": jnp.asarray(rng.normal(size=(*lead, 4, 3)), jnp.float32)},
    "bias": jnp.asarray(rng.normal(size=(*lead, 3)), jnp.float32),
  }


def flat(tree) -> np.ndarray:
  """A pytree's leaves flattened into one float64 vector."""
  return np.asarray(ravel_pytree(tree)[0], np.float64)


def rows(stacked) -> np.ndarray:
  """[K, P]: each entry of a pytree with leading axis K, flattened like `flat`."""
  return np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(stacked), np.float64)


def arrivals(seed=0, k=K, staleness=None, num_examples=None):
  rng = np.random.default_rng(seed)
  staleness = jnp.asarray(
    rng.integers(0, 20, size=k) if staleness is None else staleness, jnp.int32
  )
  return Arrivals(
    payload=params_like(seed + 1, (k,)),
    client=jnp.arange(k, dtype=jnp.int32),
    staleness=staleness,
    num_examples=jnp.asarray(
      rng.integers(0, 50, size=k) if num_examples is None else num_examples, jnp.float32
    ),
    version=30 - staleness,  # aggregated in round 31
    mask=jnp.ones(k, bool),
  )


def build(name, **overrides):
  config = default.get_config()
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  algo, hp = algorithms.build(name, config)
  hparams = {"lr": 0.1, "momentum": 0.0, "clip": 20.0, **hp}
  return algo, jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), hparams)


def aggregate(algo, hparams, arr, params=None):
  params = params_like(0) if params is None else params
  server_state, _ = algo.init(params, 10, hparams)
  new, _, metrics = jax.jit(algo.aggregate)(server_state, params, arr, hparams)
  return new, metrics


def uploads(algo, hparams, seed=0, num_examples=None, staleness=None):
  """K arrivals whose payloads each algorithm built itself (client_begin, then client_end)."""
  params = params_like(0)
  server, clients = algo.init(params, K, hparams)
  n = np.random.default_rng(seed).integers(0, 50, size=K) if num_examples is None else num_examples
  payloads = []
  for i in range(K):
    b = Broadcast(
      params, params, jnp.int32(i), jnp.int32(0), jnp.float32(n[i]),
      lambda p: (jnp.ones(3), jnp.full(3, 20.0)), jnp.int32(2 * (n[i] > 0)),
    )  # fmt: skip
    row = jax.tree.map(lambda x, i=i: x[i], clients)
    _, row, _ = algo.client_begin(row, server, b, hparams)
    payloads.append(algo.client_end(row, b, params_like(seed + 1 + i), hparams)[0])
  template = arrivals(seed, staleness=staleness, num_examples=n)
  return template._replace(payload=jax.tree.map(lambda *x: jnp.stack(x), *payloads))


def model_part(payload):
  """The param-shaped part of a payload (FedQS adds its feedback bit, theta and G)."""
  return payload["upload"] if isinstance(payload, dict) and "upload" in payload else payload


@pytest.mark.parametrize("name", algorithms.names())
def test_contract_finite_and_shaped(name):
  algo, hparams = build(name)
  arr = uploads(algo, hparams, num_examples=np.array([0.0, 3.0, 0.0, 7.0, 1.0]))
  new, metrics = aggregate(algo, hparams, arr)
  chex.assert_trees_all_equal_shapes(new, params_like(0))
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((new, metrics)))


# FedAsync with K > 1 is a FIFO rule (arrivals mixed in one after another): see
# test_fedasync_k_arrivals_are_k_sequential_async_steps instead.
@pytest.mark.parametrize("name", [n for n in algorithms.names() if n != "fedasync"])
def test_contract_permutation_invariant(name):
  algo, hparams = build(name)
  arr = uploads(algo, hparams, seed=3)
  perm = np.random.default_rng(0).permutation(K)
  permuted = jax.tree.map(lambda x: x[perm], arr)
  a, _ = aggregate(algo, hparams, arr)
  b, _ = aggregate(algo, hparams, permuted)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)


@pytest.mark.parametrize("name", algorithms.names())
def test_contract_client_side_payload(name):
  algo, hparams = build(name)
  params, trained = params_like(0), params_like(1)
  b = Broadcast(
    params, params, jnp.int32(3), jnp.int32(2), jnp.float32(5),
    lambda p: (jnp.ones(3), jnp.full(3, 20.0)), jnp.int32(2),
  )  # fmt: skip
  server, clients = algo.init(params, 10, hparams)
  row = jax.tree.map(lambda x: x[3], clients)
  settings, row, info = algo.client_begin(row, server, b, hparams)
  assert all(jnp.shape(v) == () for v in info.values())
  assert float(settings.lr) == pytest.approx(0.1)  # a first task trains with the local lr
  payload, _ = algo.client_end(row, b, trained, hparams)
  chex.assert_trees_all_equal_shapes(model_part(payload), params)
  chex.assert_tree_all_finite(payload)


def test_fedavg_weights_are_data_sizes_and_sum_to_one():
  algo, hparams = build("fedavg")
  n = np.array([1.0, 0.0, 3.0, 4.0, 2.0])
  arr = arrivals(num_examples=n)
  new, _ = aggregate(algo, hparams, arr)
  expected = jax.tree.map(lambda x: np.tensordot(n / n.sum(), np.asarray(x), 1), arr.payload)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5), new, expected)
  # Identical uploads average to themselves (weights sum to one).
  same = arr._replace(payload=jax.tree.map(lambda x: jnp.broadcast_to(x[0], x.shape), arr.payload))
  new, _ = aggregate(algo, hparams, same)
  first = jax.tree.map(lambda x: x[0], arr.payload)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5), new, first)


def test_fedavg_keeps_the_model_when_every_arrival_is_empty():
  algo, hparams = build("fedavg")
  params = params_like(7)
  new, _ = aggregate(algo, hparams, arrivals(num_examples=np.zeros(K)), params)
  jax.tree.map(np.testing.assert_array_equal, new, params)


def test_fedsgd_formula():
  algo, hparams = build("fedsgd", **{"fedsgd.server_lr": 0.5})
  n = np.array([1.0, 2.0, 3.0, 0.0, 4.0])
  arr = arrivals(num_examples=n)
  params = params_like(0)
  new, _ = aggregate(algo, hparams, arr, params)
  expected = jax.tree.map(
    lambda w, d: np.asarray(w) + 0.5 * np.tensordot(n / n.sum(), np.asarray(d), 1),
    params,
    arr.payload,
  )
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), new, expected)


def test_fedbuff_with_beta_zero_is_the_mean_update():
  algo, hparams = build("fedbuff", **{"fedbuff.beta": 0.0})
  arr = arrivals()
  params = params_like(0)
  new, _ = aggregate(algo, hparams, arr, params)
  expected = jax.tree.map(lambda w, d: w + np.asarray(d).mean(0), params, arr.payload)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), new, expected)


def test_fedbuff_staleness_discount_and_momentum():
  algo, hparams = build("fedbuff", **{"fedbuff.beta": 0.5, "fedbuff.server_momentum": 0.9})
  tau = np.array([0, 1, 3, 8, 15])
  arr = arrivals(staleness=tau)
  params = params_like(0)
  state, _ = algo.init(params, 10, hparams)
  step = jax.jit(algo.aggregate)
  w1, state, _ = step(state, params, arr, hparams)
  w2, state, _ = step(state, w1, arr, hparams)
  u = jax.tree.map(lambda d: np.tensordot((1 + tau) ** -0.5 / K, np.asarray(d), 1), arr.payload)
  # m1 = u, w1 = w + u; m2 = 0.9 u + u, w2 = w1 + 1.9 u.
  jax.tree.map(lambda a, w, x: np.testing.assert_allclose(a, w + x, rtol=1e-5), w1, params, u)
  jax.tree.map(lambda a, w, x: np.testing.assert_allclose(a, w + 1.9 * x, rtol=1e-5), w2, w1, u)


def test_fedasync_alpha_one_k_one_takes_the_new_model():
  algo, hparams = build("fedasync", **{"fedasync.alpha": 1.0, "fedasync.staleness": "constant"})
  arr = arrivals(k=1, staleness=[7])
  new, _ = aggregate(algo, hparams, arr)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y[0], rtol=1e-6), new, arr.payload)


@pytest.mark.parametrize(
  "fn,tau,expected_s",
  [
    ("constant", 5, 1.0),
    ("polynomial", 3, (3 + 1) ** -0.5),
    ("hinge", 4, 1.0),
    ("hinge", 7, 1.0 / (10.0 * (7 - 4) + 1.0)),
  ],
)
def test_fedasync_mixing_formula(fn, tau, expected_s):
  algo, hparams = build("fedasync", **{"fedasync.staleness": fn})
  arr = arrivals(k=1, staleness=[tau])
  params = params_like(0)
  new, metrics = aggregate(algo, hparams, arr, params)
  a = 0.6 * expected_s
  assert float(metrics["mean_alpha"]) == pytest.approx(a, rel=1e-6)
  expected = jax.tree.map(lambda w, x: (1 - a) * w + a * np.asarray(x)[0], params, arr.payload)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), new, expected)


def test_fedasync_k_arrivals_are_k_sequential_async_steps():
  algo, hparams = build("fedasync")
  arr = arrivals(seed=4)
  params = params_like(0)
  together, _ = aggregate(algo, hparams, arr, params)
  w = params
  for i in range(K):
    w, _ = aggregate(algo, hparams, jax.tree.map(lambda x, i=i: x[i : i + 1], arr), w)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), together, w)

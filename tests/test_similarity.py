"""FedQS Mod 1 dissimilarities against NumPy and plain-Python references."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedqs_jax.algorithms import similarity
from fedqs_jax.algorithms.similarity import SIMILARITIES, dissimilarity

SEEDS = (0, 1, 2, 3)


def random_tree(seed: int, lead: tuple[int, ...] = (), scale: float = 1.0) -> dict:
  """Three leaves of different shapes (a flax-like params dict), float32."""
  rng = np.random.default_rng(seed)
  return {
    "dense": {
      "kernel": jnp.asarray(scale * rng.normal(size=(*lead, 4, 3)), jnp.float32),
      "bias": jnp.asarray(scale * rng.normal(size=(*lead, 3)), jnp.float32),
    },
    "conv": jnp.asarray(scale * rng.normal(size=(*lead, 2, 2, 1, 5)), jnp.float32),
  }


def flat64(tree) -> np.ndarray:
  """All leaves concatenated, in float64."""
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def numpy_cosine_degrees(a, b) -> float:
  x, y = flat64(a), flat64(b)
  cos = x @ y / (np.linalg.norm(x) * np.linalg.norm(y))
  return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def python_layerwise_minmax(a, b) -> float:
  """The spec formula transcribed with lists and `math` only."""

  def normalise(values):
    low, high = min(values), max(values)
    if high == low:
      out = [0.0 for _ in values]
    else:
      out = [(v - low) / (high - low) for v in values]
    total = sum(out)
    if total != 0.0:
      out = [v / total for v in out]
    return out

  angles = []
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    p = normalise(np.asarray(x).ravel().tolist())
    q = normalise(np.asarray(y).ravel().tolist())
    norm_p = math.sqrt(sum(v * v for v in p))
    norm_q = math.sqrt(sum(v * v for v in q))
    if norm_p == 0.0 or norm_q == 0.0:
      angles.append(0.0)
      continue
    cos = sum(u * v for u, v in zip(p, q, strict=True)) / (norm_p * norm_q)
    angles.append(math.degrees(math.acos(max(-1.0, min(1.0, cos)))))
  return sum(angles) / len(angles)


_jitted = jax.jit(dissimilarity, static_argnums=0)


def theta(name, a, b) -> float:
  """The jitted dissimilarity as a Python float, after checking it is a finite [] float32."""
  value = _jitted(name, a, b)
  assert value.shape == () and value.dtype == jnp.float32
  assert np.isfinite(float(value))
  return float(value)


# ---- cosine ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_cosine_matches_numpy(seed):
  a, b = random_tree(seed), random_tree(seed + 100)
  np.testing.assert_allclose(theta("cosine", a, b), numpy_cosine_degrees(a, b), atol=1e-3)


@pytest.mark.parametrize("seed", SEEDS)
def test_cosine_of_correlated_trees_matches_numpy(seed):
  # Small angles, where a float32 arccos would lose precision.
  a = random_tree(seed)
  b = jax.tree.map(lambda x, n: x + 0.01 * n, a, random_tree(seed + 100))
  expected = numpy_cosine_degrees(a, b)
  assert 0.1 < expected < 5.0
  np.testing.assert_allclose(theta("cosine", a, b), expected, rtol=1e-4)


@pytest.mark.parametrize("seed", SEEDS)
def test_cosine_identical_negated_orthogonal(seed):
  a = random_tree(seed)
  assert theta("cosine", a, a) == pytest.approx(0.0, abs=1e-4)
  assert theta("cosine", a, jax.tree.map(jnp.negative, a)) == pytest.approx(180.0, abs=1e-4)
  # Gram-Schmidt: remove from b its component along a (float64, then float32).
  x, y = flat64(a), flat64(random_tree(seed + 100))
  y = y - (x @ y) / (x @ x) * x
  leaves, treedef = jax.tree.flatten(a)
  sizes = np.cumsum([leaf.size for leaf in leaves])[:-1]
  parts = [
    jnp.asarray(p.reshape(leaf.shape), jnp.float32)
    for p, leaf in zip(np.split(y, sizes), leaves, strict=True)
  ]
  b = jax.tree.unflatten(treedef, parts)
  assert theta("cosine", a, b) == pytest.approx(90.0, abs=1e-3)


def test_cosine_orthogonal_across_leaves_is_exactly_90():
  a = {"w": jnp.ones((2, 3)), "b": jnp.zeros(4)}
  b = {"w": jnp.zeros((2, 3)), "b": jnp.ones(4)}
  assert theta("cosine", a, b) == pytest.approx(90.0, abs=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_cosine_is_scale_invariant(seed):
  a, b = random_tree(seed), random_tree(seed + 100)
  base = theta("cosine", a, b)
  scaled = jax.tree.map(lambda x: 3.7 * x, b)
  assert theta("cosine", a, scaled) == pytest.approx(base, abs=1e-3)
  assert theta("cosine", scaled, a) == pytest.approx(base, abs=1e-3)


def test_cosine_survives_huge_and_tiny_magnitudes():
  a, b = random_tree(0), random_tree(1)
  base = theta("cosine", a, b)
  for scale in (1e30, 1e-30):
    big = jax.tree.map(lambda x, s=scale: s * x, a)
    assert theta("cosine", big, b) == pytest.approx(base, abs=1e-3)


@pytest.mark.parametrize("name", ["cosine", "cosine_layerwise_minmax"])
def test_angles_near_float32_limit(name):
  # Division by a scale >= 2^126 flushes to zero on XLA; the angles must not notice.
  a = {"x": jnp.asarray([3e38, -3e38, 1e38]), "y": jnp.asarray([[-2e38, 1e30], [0.0, 3.4e38]])}
  b = {"x": jnp.asarray([1.0, 2.0, 3.0]), "y": jnp.asarray([[4.0, -1.0], [2.0, 0.5]])}
  small = jax.tree.map(lambda x: x * 1e-30, a)
  np.testing.assert_allclose(theta(name, a, b), theta(name, small, b), atol=1e-3)
  np.testing.assert_allclose(theta(name, b, a), theta(name, b, small), atol=1e-3)
  assert theta(name, a, a) == pytest.approx(0.0, abs=1e-4)


def test_cosine_zero_side_gives_zero():
  a = random_tree(0)
  zeros = jax.tree.map(jnp.zeros_like, a)
  assert theta("cosine", a, zeros) == 0.0
  assert theta("cosine", zeros, a) == 0.0


# ---- cosine_layerwise_minmax -------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_layerwise_minmax_matches_plain_python(seed):
  a, b = random_tree(seed), random_tree(seed + 100)
  expected = python_layerwise_minmax(a, b)
  assert 0.0 < expected < 90.0
  np.testing.assert_allclose(theta("cosine_layerwise_minmax", a, b), expected, atol=1e-3)


def test_layerwise_minmax_guard_constant_layer():
  a, b = random_tree(5), random_tree(6)
  a["dense"]["bias"] = jnp.full((3,), 2.5, jnp.float32)  # constant: normalises to all zeros
  expected = python_layerwise_minmax(a, b)
  got = theta("cosine_layerwise_minmax", a, b)
  np.testing.assert_allclose(got, expected, atol=1e-3)
  # The constant layer contributes 0 but still counts in the mean over 3 leaves.
  others = {"k": a["dense"]["kernel"], "c": a["conv"]}
  others_b = {"k": b["dense"]["kernel"], "c": b["conv"]}
  np.testing.assert_allclose(
    got, theta("cosine_layerwise_minmax", others, others_b) * 2 / 3, atol=1e-3
  )


def test_layerwise_minmax_guard_zero_tree_and_identical():
  a = random_tree(7)
  zeros = jax.tree.map(jnp.zeros_like, a)
  assert python_layerwise_minmax(a, zeros) == 0.0
  assert theta("cosine_layerwise_minmax", a, zeros) == 0.0
  assert theta("cosine_layerwise_minmax", zeros, zeros) == 0.0
  assert theta("cosine_layerwise_minmax", a, a) == pytest.approx(0.0, abs=1e-4)


def test_layerwise_minmax_is_invariant_to_affine_maps_per_layer():
  a, b = random_tree(8), random_tree(9)
  shifted = jax.tree.map(lambda x: 3.7 * x - 11.0, b)
  np.testing.assert_allclose(
    theta("cosine_layerwise_minmax", a, shifted),
    theta("cosine_layerwise_minmax", a, b),
    atol=1e-3,
  )


def test_layerwise_minmax_small_python_cases():
  a = {"x": jnp.asarray([0.0, 1.0]), "y": jnp.asarray([1.0, 2.0, 3.0])}
  b = {"x": jnp.asarray([1.0, 0.0]), "y": jnp.asarray([3.0, 2.0, 1.0])}
  # x: [0, 1] vs [1, 0] -> 90; y: [0, .5, 1] vs [1, .5, 0] -> acos(0.25 / 1.25).
  expected = (90.0 + math.degrees(math.acos(0.2))) / 2
  assert python_layerwise_minmax(a, b) == pytest.approx(expected)
  assert theta("cosine_layerwise_minmax", a, b) == pytest.approx(expected, abs=1e-4)


# ---- euclidean / manhattan ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_distances_match_numpy(seed):
  a, b = random_tree(seed), random_tree(seed + 100)
  d = flat64(a) - flat64(b)
  np.testing.assert_allclose(theta("euclidean", a, b), np.linalg.norm(d, 2), rtol=1e-5)
  np.testing.assert_allclose(theta("manhattan", a, b), np.linalg.norm(d, 1), rtol=1e-5)
  assert theta("euclidean", a, a) == 0.0
  assert theta("manhattan", a, a) == 0.0


def test_euclidean_survives_huge_and_tiny_magnitudes():
  for scale in (1e37, 1e25, 1e-25):
    a, b = random_tree(0, scale=scale), random_tree(1, scale=scale)
    expected = np.linalg.norm(flat64(a) - flat64(b))
    np.testing.assert_allclose(theta("euclidean", a, b), expected, rtol=1e-5)


# ---- all names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SIMILARITIES)
def test_all_zero_inputs_give_finite_zero(name):
  zeros = jax.tree.map(jnp.zeros_like, random_tree(0))
  assert theta(name, zeros, zeros) == 0.0


@pytest.mark.parametrize("name", SIMILARITIES)
def test_empty_pytree_gives_zero(name):
  assert theta(name, {}, {}) == 0.0


def test_unknown_name_lists_allowed_names():
  a = random_tree(0)
  with pytest.raises(ValueError, match="cosine_layerwise_minmax") as info:
    dissimilarity("pearson", a, a)
  for name in SIMILARITIES:
    assert name in str(info.value)


def test_mismatched_pytrees_raise():
  a = random_tree(0)
  with pytest.raises(ValueError, match="structure"):
    dissimilarity("cosine", a, {"dense": a["dense"]})
  b = dict(a, conv=jnp.zeros((3,)))
  with pytest.raises(ValueError, match="shape"):
    dissimilarity("euclidean", a, b)


@pytest.mark.parametrize("name", SIMILARITIES)
def test_jit_and_vmap_agree_with_eager(name):
  batch = 5
  a, b = random_tree(10, lead=(batch,)), random_tree(11, lead=(batch,))
  b = jax.tree.map(lambda x, y: x.at[0].set(y[0]), b, a)  # row 0: identical trees
  fn = functools.partial(dissimilarity, name)
  batched = jax.jit(jax.vmap(fn))(a, b)
  assert batched.shape == (batch,) and batched.dtype == jnp.float32
  rows = [
    float(jax.jit(fn)(jax.tree.map(lambda x, i=i: x[i], a), jax.tree.map(lambda x, i=i: x[i], b)))
    for i in range(batch)
  ]
  np.testing.assert_allclose(np.asarray(batched), rows, rtol=1e-5, atol=1e-5)
  eager = dissimilarity(name, jax.tree.map(lambda x: x[1], a), jax.tree.map(lambda x: x[1], b))
  np.testing.assert_allclose(rows[1], float(eager), rtol=1e-5, atol=1e-5)
  assert rows[0] == pytest.approx(0.0, abs=1e-4)


def test_module_exports():
  assert similarity.SIMILARITIES == ("cosine", "cosine_layerwise_minmax", "euclidean", "manhattan")
  assert set(similarity.__all__) == {"SIMILARITIES", "dissimilarity"}

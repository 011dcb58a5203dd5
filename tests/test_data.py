"""Tests of the partitions, the offline loaders and the data-config validation."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from fedqs_jax import data
from fedqs_jax.data import partition
from fedqs_jax.errors import ConfigError
from tests.common import data_config


def _assert_exact_partition(parts: list[np.ndarray], n: int, num_clients: int) -> None:
  assert len(parts) == num_clients
  for p in parts:
    assert np.issubdtype(p.dtype, np.integer)
  flat = np.concatenate(parts)
  assert flat.size == n  # nothing lost, nothing duplicated across or within clients
  np.testing.assert_array_equal(np.sort(flat), np.arange(n))


def _labels(num_classes: int, per_class: int, seed: int = 0) -> np.ndarray:
  y = np.repeat(np.arange(num_classes), per_class)
  return np.random.default_rng(seed).permutation(y)


def _mean_max_class_share(labels: np.ndarray, parts: list[np.ndarray]) -> float:
  shares = [np.bincount(labels[p]).max() / len(p) for p in parts if len(p)]
  return float(np.mean(shares))


def _reference_hetero_dirichlet(labels, num_clients, alpha, rng):
  """A plain loop transcription of the reference HeteroDiri."""
  parts = [[] for _ in range(num_clients)]
  for c in sorted(set(labels.tolist())):
    q = rng.dirichlet(alpha * np.ones(num_clients))
    idx = np.where(labels == c)[0]
    rng.shuffle(idx)
    n_c = len(idx)
    start, running = 0, 0
    for k in range(num_clients):
      running += int(np.round(q[k] * n_c))
      end = n_c if k == num_clients - 1 else min(running, n_c)
      parts[k].extend(idx[start:end].tolist())
      start = end
  return [sorted(p) for p in parts]


# ----------------------------------------------------------------------------- partitions


@pytest.mark.parametrize("n,num_clients", [(100, 7), (10, 10), (3, 8), (1000, 1), (0, 3)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iid_is_exact_and_balanced(n, num_clients, seed):
  parts = partition.iid(n, num_clients, np.random.default_rng(seed))
  _assert_exact_partition(parts, n, num_clients)
  sizes = [len(p) for p in parts]
  assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.5, 1.0, 1000.0])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(
  "num_classes,per_class,num_clients",
  [(10, 50, 10), (10, 50, 100), (3, 2, 20), (5, 1, 7), (4, 30, 1)],  # incl. N > n_c
)
def test_hetero_dirichlet_is_exact_partition(num_classes, per_class, num_clients, alpha, seed):
  labels = _labels(num_classes, per_class, seed)
  parts = partition.hetero_dirichlet(labels, num_clients, alpha, np.random.default_rng(seed))
  _assert_exact_partition(parts, labels.size, num_clients)
  for p in parts:
    assert np.all(np.diff(p) > 0)  # documented: sorted ascending


def test_hetero_dirichlet_unbalanced_classes_exact():
  labels = np.concatenate([np.zeros(500, int), np.ones(3, int), np.full(41, 7)])
  for seed in range(5):
    parts = partition.hetero_dirichlet(labels, 50, 0.3, np.random.default_rng(seed))
    _assert_exact_partition(parts, labels.size, 50)


def test_hetero_dirichlet_small_alpha_is_skewed():
  labels = _labels(10, 200)
  rng = np.random.default_rng(0)
  skewed = _mean_max_class_share(labels, partition.hetero_dirichlet(labels, 20, 0.1, rng))
  iid = _mean_max_class_share(labels, partition.iid(labels.size, 20, rng))
  assert iid < 0.25
  assert skewed > 0.6
  assert skewed > 2.5 * iid


def test_hetero_dirichlet_large_alpha_is_near_uniform():
  labels = _labels(10, 200)
  parts = partition.hetero_dirichlet(labels, 10, 1000.0, np.random.default_rng(0))
  for p in parts:
    shares = np.bincount(labels[p], minlength=10) / len(p)
    np.testing.assert_allclose(shares, 0.1, atol=0.03)


@pytest.mark.parametrize("num_clients,alpha", [(10, 0.5), (30, 0.1), (7, 5.0)])
def test_hetero_dirichlet_matches_reference(num_clients, alpha):
  labels = _labels(10, 37, seed=4)
  got = partition.hetero_dirichlet(labels, num_clients, alpha, np.random.default_rng(123))
  want = _reference_hetero_dirichlet(labels, num_clients, alpha, np.random.default_rng(123))
  assert [p.tolist() for p in got] == want


# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits_dirichlet():
  return data.load_digits(num_clients=20, partition="dirichlet", dirichlet_alpha=0.5, seed=0)


def _check_layout(fd: data.FederatedData) -> None:
  index = np.asarray(fd.client_index)
  counts = np.asarray(fd.client_count)
  n_train = fd.x_train.shape[0]
  assert index.dtype == np.int32 and counts.dtype == np.int32
  assert index.shape == (fd.num_clients, max(int(counts.max()), 1))
  assert counts.sum() == n_train
  seen = []
  for row, c in zip(index, counts, strict=True):
    valid = row[:c]
    assert len(np.unique(valid)) == c
    assert np.all((valid >= 0) & (valid < n_train))
    seen.append(valid)
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(n_train))


def test_digits_shapes_and_values(digits_dirichlet):
  fd = digits_dirichlet
  assert fd.num_classes == 10 and fd.num_clients == 20
  assert fd.x_train.shape[1:] == (8, 8, 1) and fd.x_test.shape[1:] == (8, 8, 1)
  assert fd.x_train.shape[0] + fd.x_test.shape[0] == 1797
  assert fd.x_test.shape[0] == 359  # stratified round(0.2 * n_c) summed over classes
  assert fd.x_train.dtype == np.float32 and fd.y_train.dtype == np.int32
  for x in (fd.x_train, fd.x_test):
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
  for y in (fd.y_train, fd.y_test):
    assert int(y.min()) >= 0 and int(y.max()) < 10
  # Stratified: every class appears in the test set in about the same share.
  test_share = np.bincount(np.asarray(fd.y_test), minlength=10) / fd.x_test.shape[0]
  np.testing.assert_allclose(test_share, 0.1, atol=0.01)
  _check_layout(fd)


def test_digits_iid_layout():
  fd = data.load_digits(num_clients=7, partition="iid", seed=3)
  _check_layout(fd)
  counts = np.asarray(fd.client_count)
  assert counts.max() - counts.min() <= 1


def test_digits_same_seed_same_arrays(digits_dirichlet):
  again = data.load_digits(num_clients=20, partition="dirichlet", dirichlet_alpha=0.5, seed=0)
  for a, b in zip(jax.tree.leaves(digits_dirichlet), jax.tree.leaves(again), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_digits_different_seed_different_partition(digits_dirichlet):
  other = data.load_digits(num_clients=20, partition="dirichlet", dirichlet_alpha=0.5, seed=1)
  assert not np.array_equal(
    np.asarray(digits_dirichlet.client_count), np.asarray(other.client_count)
  ) or not np.array_equal(np.asarray(digits_dirichlet.client_index), np.asarray(other.client_index))


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_and_determinism():
  fd = data.load_synthetic(num_clients=30, alpha=1.0, beta=1.0, test_fraction=0.2, seed=0)
  assert fd.num_classes == 10 and fd.num_clients == 30
  assert fd.x_train.shape[1:] == (60,) and fd.x_test.shape[1:] == (60,)
  assert fd.x_train.dtype == np.float32 and fd.y_test.dtype == np.int32
  assert fd.x_test.shape[0] > 0
  for y in (fd.y_train, fd.y_test):
    assert int(y.min()) >= 0 and int(y.max()) < 10
  counts = np.asarray(fd.client_count)
  assert np.all(counts >= 1) and np.all(counts <= 500)
  assert len(np.unique(np.asarray(fd.y_train))) > 1
  _check_layout(fd)
  again = data.load_synthetic(num_clients=30, alpha=1.0, beta=1.0, test_fraction=0.2, seed=0)
  for a, b in zip(jax.tree.leaves(fd), jax.tree.leaves(again), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  other = data.load_synthetic(num_clients=30, alpha=1.0, beta=1.0, test_fraction=0.2, seed=1)
  assert other.x_train.shape != fd.x_train.shape or not np.array_equal(
    np.asarray(other.x_train), np.asarray(fd.x_train)
  )


def test_synthetic_cap():
  fd = data.load_synthetic(num_clients=40, seed=0, max_examples_per_client=60)
  assert np.all(np.asarray(fd.client_count) <= 60)


# ----------------------------------------------------------------------------- config


_config = data_config


def test_load_from_config():
  fd = data.load(_config(), seed=0)
  assert isinstance(fd, data.FederatedData) and fd.num_clients == 10
  fd = data.load(_config(name="synthetic", num_clients=5), seed=0)
  assert fd.feature_shape == (60,) and fd.num_clients == 5
  assert data.OFFLINE_DATASETS == ("digits", "synthetic")
  assert set(data.OFFLINE_DATASETS) <= set(data.DATASETS)


@pytest.mark.parametrize(
  "overrides,field",
  [
    ({"name": "imagenet"}, "name"),
    ({"num_clients": 0}, "num_clients"),
    ({"num_clients": -3}, "num_clients"),
    ({"partition": "pathological"}, "partition"),
    ({"dirichlet_alpha": 0.0}, "dirichlet_alpha"),
    ({"dirichlet_alpha": -1.0}, "dirichlet_alpha"),
    ({"test_fraction": 0.0}, "test_fraction"),
    ({"test_fraction": 1.0}, "test_fraction"),
    ({"test_fraction": 1.5}, "test_fraction"),
  ],
)
def test_validate_rejects(overrides, field):
  with pytest.raises(ConfigError, match=field):
    data.validate(_config(**overrides))
  with pytest.raises(ConfigError, match=field):
    data.load(_config(**overrides), seed=0)


def test_validate_unknown_name_lists_allowed():
  with pytest.raises(ConfigError, match="digits") as info:
    data.validate(_config(name="imagenet"))
  assert "synthetic" in str(info.value)


def test_dirichlet_alpha_only_checked_for_dirichlet():
  data.validate(_config(partition="iid", dirichlet_alpha=0.0))  # alpha is not used: accepted
  with pytest.raises(ConfigError, match="data.dirichlet_alpha"):
    data.validate(_config(partition="dirichlet", dirichlet_alpha=0.0))

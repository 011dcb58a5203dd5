"""Tests of the per-client validation sets (`fedqs_jax.data.validation`)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from fedqs_jax import data
from fedqs_jax.data import partition
from fedqs_jax.errors import ConfigError
from tests.common import data_config


def _small_data(sizes=(40, 0, 7, 1, 2, 13, 100), num_classes=4, seed=0) -> data.FederatedData:
  """Clients of the given sizes (incl. an empty one) over contiguous rows, random labels."""
  rng = np.random.default_rng(seed)
  n = sum(sizes)
  bounds = np.cumsum((0, *sizes))
  parts = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
  y = rng.integers(0, num_classes, size=n)
  y[bounds[0] : bounds[1]] = np.where(y[bounds[0] : bounds[1]] == 3, 0, y[bounds[0] : bounds[1]])
  return partition.pack(rng.normal(size=(n, 3)), y, parts, rng.normal(size=(5, 3)), y[:5], 4)


def _rows(index, counts) -> list[np.ndarray]:
  index, counts = np.asarray(index), np.asarray(counts)
  return [index[i, : int(c)] for i, c in enumerate(counts)]


def _train_rows(fd: data.FederatedData) -> list[np.ndarray]:
  return _rows(fd.client_index, fd.client_count)


def _val_rows(fd: data.FederatedData) -> list[np.ndarray]:
  return _rows(fd.val_index, fd.val_count)


def _check_val_layout(fd: data.FederatedData) -> None:
  val_index, val_count = np.asarray(fd.val_index), np.asarray(fd.val_count)
  assert val_index.dtype == np.int32 and val_count.dtype == np.int32
  assert val_index.shape == (fd.num_clients, max(int(val_count.max()), 1))
  assert val_count.shape == (fd.num_clients,)
  for row, c in zip(val_index, val_count, strict=True):
    assert np.all(row[c:] == 0)  # padding


def test_pack_has_empty_validation():
  fd = _small_data()
  np.testing.assert_array_equal(np.asarray(fd.val_index), np.zeros((7, 1), np.int32))
  np.testing.assert_array_equal(np.asarray(fd.val_count), np.zeros(7, np.int32))
  assert fd.max_val_size == 1
  _check_val_layout(fd)


# ----------------------------------------------------------------------------- holdout


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1])
def test_holdout_is_a_disjoint_split(fraction, seed):
  fd = _small_data()
  out = data.with_validation(fd, fraction, "holdout", seed=seed)
  _check_val_layout(out)
  assert np.asarray(out.client_index).dtype == np.int32
  assert np.asarray(out.client_count).dtype == np.int32
  assert out.x_train is fd.x_train and out.y_train is fd.y_train
  for orig, train, val in zip(_train_rows(fd), _train_rows(out), _val_rows(out), strict=True):
    n = len(orig)
    want = min(int(np.round(fraction * n)), n - 1) if n else 0
    assert len(val) == want
    assert len(train) + len(val) == n
    assert not set(train.tolist()) & set(val.tolist())
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.sort(orig))
  assert int(np.asarray(out.client_count)[1]) == 0 and int(np.asarray(out.val_count)[1]) == 0


def test_holdout_size_is_round_fraction_for_usual_fractions():
  fd = _small_data(sizes=(10, 11, 12, 13, 14, 15, 0, 3))
  out = data.with_validation(fd, 0.2, "holdout", seed=3)
  counts = np.asarray(fd.client_count)
  np.testing.assert_array_equal(np.asarray(out.val_count), np.round(0.2 * counts).astype(np.int32))
  np.testing.assert_array_equal(
    np.asarray(out.client_count), counts - np.round(0.2 * counts).astype(np.int32)
  )


def test_holdout_keeps_one_training_example():
  fd = _small_data(sizes=(1, 2, 3))
  out = data.with_validation(fd, 0.9, "holdout", seed=0)
  np.testing.assert_array_equal(np.asarray(out.client_count), [1, 1, 1])
  np.testing.assert_array_equal(np.asarray(out.val_count), [0, 1, 2])


@pytest.mark.parametrize("mode", data.VALIDATION_MODES)
def test_fraction_zero_means_no_validation(mode):
  fd = _small_data()
  out = data.with_validation(fd, 0.0, mode, seed=0)
  np.testing.assert_array_equal(np.asarray(out.client_index), np.asarray(fd.client_index))
  np.testing.assert_array_equal(np.asarray(out.client_count), np.asarray(fd.client_count))
  np.testing.assert_array_equal(np.asarray(out.val_index), np.zeros((7, 1), np.int32))
  np.testing.assert_array_equal(np.asarray(out.val_count), np.zeros(7, np.int32))


def test_holdout_is_uniform_over_examples():
  fd = _small_data(sizes=(10,))
  hits = np.zeros(10)
  for seed in range(400):
    hits[_val_rows(data.with_validation(fd, 0.2, "holdout", seed=seed))[0]] += 1
  np.testing.assert_allclose(hits / 400, 0.2, atol=0.08)


# ----------------------------------------------------------------------------- reference


@pytest.mark.parametrize("per_class", [1, 3, 20])
@pytest.mark.parametrize("seed", [0, 1])
def test_reference_per_class_subset_of_training(per_class, seed):
  fd = _small_data()
  out = data.with_validation(fd, 0.2, "reference", seed=seed, per_class=per_class)
  _check_val_layout(out)
  # Reference mode never touches the training rows.
  np.testing.assert_array_equal(np.asarray(out.client_index), np.asarray(fd.client_index))
  np.testing.assert_array_equal(np.asarray(out.client_count), np.asarray(fd.client_count))
  y = np.asarray(fd.y_train)
  for train, val in zip(_train_rows(fd), _val_rows(out), strict=True):
    assert len(np.unique(val)) == len(val)  # no duplicates
    assert set(val.tolist()) <= set(train.tolist())
    train_classes = np.bincount(y[train], minlength=4)
    val_classes = np.bincount(y[val], minlength=4)
    np.testing.assert_array_equal(val_classes, np.minimum(train_classes, per_class))
  # Client 0 has no class-3 examples, so neither does its validation set.
  assert 3 not in set(y[_val_rows(out)[0]].tolist())
  assert int(np.asarray(out.val_count)[1]) == 0


def test_reference_ignores_fraction():
  fd = _small_data()
  a = data.with_validation(fd, 0.2, "reference", seed=5)
  b = data.with_validation(fd, 0.7, "reference", seed=5)
  np.testing.assert_array_equal(np.asarray(a.val_index), np.asarray(b.val_index))
  np.testing.assert_array_equal(np.asarray(a.val_count), np.asarray(b.val_count))


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("mode", data.VALIDATION_MODES)
def test_same_seed_same_result_different_seed_different(mode):
  fd = _small_data()
  kw = {"per_class": 5}
  a = data.with_validation(fd, 0.3, mode, seed=7, **kw)
  b = data.with_validation(fd, 0.3, mode, seed=7, **kw)
  c = data.with_validation(fd, 0.3, mode, seed=8, **kw)
  for field in ("client_index", "client_count", "val_index", "val_count"):
    np.testing.assert_array_equal(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)))
  assert not np.array_equal(np.asarray(a.val_index), np.asarray(c.val_index))


@pytest.mark.parametrize(
  "kwargs,field",
  [
    ({"fraction": -0.1}, "validation_fraction"),
    ({"fraction": 1.0}, "validation_fraction"),
    ({"mode": "random"}, "validation_mode"),
    ({"per_class": 0}, "validation_per_class"),
  ],
)
def test_with_validation_rejects(kwargs, field):
  args = {"fraction": 0.2, "mode": "holdout", "seed": 0, **kwargs}
  with pytest.raises(ConfigError, match=field):
    data.with_validation(_small_data(), **args)


# ----------------------------------------------------------------------------- config / load


_config = data_config


@pytest.mark.parametrize("name", data.OFFLINE_DATASETS)
def test_load_with_holdout_validation(name):
  plain = data.load(_config(name=name), seed=0)
  fd = data.load(_config(name=name, validation_fraction=0.2), seed=0)
  counts = np.asarray(plain.client_count)
  want = np.round(0.2 * counts).astype(np.int32)
  np.testing.assert_array_equal(np.asarray(fd.val_count), want)
  np.testing.assert_array_equal(np.asarray(fd.client_count), counts - want)
  assert isinstance(fd.val_index, jnp.ndarray) and fd.val_index.dtype == jnp.int32
  for orig, train, val in zip(_train_rows(plain), _train_rows(fd), _val_rows(fd), strict=True):
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.sort(orig))
  # Validation does not disturb the loader's own streams.
  np.testing.assert_array_equal(np.asarray(fd.x_test), np.asarray(plain.x_test))
  np.testing.assert_array_equal(np.asarray(fd.x_train), np.asarray(plain.x_train))
  again = data.load(_config(name=name, validation_fraction=0.2), seed=0)
  np.testing.assert_array_equal(np.asarray(fd.val_index), np.asarray(again.val_index))


@pytest.mark.parametrize("name", data.OFFLINE_DATASETS)
def test_load_with_reference_validation(name):
  config = _config(name=name, validation_fraction=0.2, validation_mode="reference")
  fd = data.load(config, seed=1)
  assert int(np.asarray(fd.val_count).sum()) > 0
  y = np.asarray(fd.y_train)
  for val in _val_rows(fd):
    assert np.bincount(y[val], minlength=10).max(initial=0) <= 20


def test_load_defaults_to_no_validation():
  fd = data.load(_config(), seed=0)
  assert int(np.asarray(fd.val_count).sum()) == 0 and fd.val_index.shape == (10, 1)


@pytest.mark.parametrize(
  "overrides,field",
  [
    ({"validation_fraction": -0.2}, "data.validation_fraction"),
    ({"validation_fraction": 1.0}, "data.validation_fraction"),
    ({"validation_fraction": "0.2"}, "data.validation_fraction"),
    ({"validation_mode": "paper"}, "data.validation_mode"),
  ],
)
def test_load_rejects_bad_validation_config(overrides, field):
  with pytest.raises(ConfigError, match=field):
    data.validate(_config(**overrides))
  with pytest.raises(ConfigError, match=field) as info:
    data.load(_config(**overrides), seed=0)
  if "fraction" in field:
    assert "must be in [0, 1)" in str(info.value)
  else:
    assert "holdout" in str(info.value) and "reference" in str(info.value)

"""`data.plays`: the fixed source/target halves of the Shakespeare plays (fixture plays only)."""

from __future__ import annotations

import numpy as np
import pytest

from fedqs_jax import data
from fedqs_jax.data import shakespeare
from fedqs_jax.errors import ConfigError
from tests.test_real_data import PLAYS, _role_windows, _shakespeare_config


def _load(**overrides) -> data.FederatedData:
  fields = {"roles": 0, "num_clients": 1, **overrides}
  return data.load(_shakespeare_config(**fields), seed=3)


def _windows(fd: data.FederatedData) -> set[tuple[int, ...]]:
  """The training and test windows (with their next character) as a set of rows."""
  rows = set()
  for x, y in ((fd.x_train, fd.y_train), (fd.x_test, fd.y_test)):
    pairs = zip(np.asarray(x).tolist(), np.asarray(y).tolist(), strict=True)
    rows |= {(*xi, yi) for xi, yi in pairs}
  return rows


@pytest.mark.parametrize(
  "names",
  [
    ["b", "a"],
    ["a", "b", "c", "d", "e"],
    [f"play_{i:02d}" for i in range(37)][::-1],
  ],
)
def test_split_plays_is_a_fixed_disjoint_cover(names):
  halves = shakespeare.split_plays(names)
  source, target = set(halves["source"]), set(halves["target"])
  assert not source & target and source | target == set(names)
  assert 0 <= len(source) - len(target) <= 1  # every other sorted name
  assert halves == shakespeare.split_plays(sorted(names))  # no dependence on the input order
  assert halves["source"][0] == min(names)


def test_source_and_target_split_the_fixture_plays_by_play():
  roles, names = shakespeare.read_roles(PLAYS), shakespeare.play_names(PLAYS)
  assert names == ["a_quarrel_of_bells", "the_lanterns_of_verona"]
  chosen = {p: shakespeare.select_plays(roles, names, p) for p in shakespeare.PLAYS}
  assert chosen["all"] == roles
  by_play = {p: {r.play for r in rs} for p, rs in chosen.items()}
  assert by_play["source"] == {"a_quarrel_of_bells"}
  assert by_play["target"] == {"the_lanterns_of_verona"}
  # Every role of a play goes with its play; the halves' union is every role, in order.
  assert sorted(chosen["source"] + chosen["target"], key=lambda r: r.role_id) == roles


def test_loaded_halves_are_disjoint_and_cover_all():
  all_, source, target = (_load(plays=p, num_clients=2) for p in ("all", "source", "target"))
  n = {k: int(fd.x_train.shape[0]) + int(fd.x_test.shape[0]) for k, fd in
       (("all", all_), ("source", source), ("target", target))}  # fmt: skip
  assert n["source"] > 0 and n["target"] > 0 and n["source"] + n["target"] == n["all"]
  assert _windows(source) | _windows(target) == _windows(all_)


def test_all_is_todays_data():
  """plays="all", and a config without the field, load every role's windows as before.

  Today's loader, transcribed: the eligible roles of `read_roles` (all plays), dealt
  by `deal_roles` with `SeedSequence([seed, 1])`, client by client, role by role.
  """
  per_role = _role_windows(10, 0.2)
  dealt = shakespeare.deal_roles(
    len(per_role), 2, 4, np.random.default_rng(np.random.SeedSequence([5, 1]))
  )
  order = [r for roles in dealt for r in roles]
  config = _shakespeare_config()
  del config["plays"]
  for fd in (data.load(_shakespeare_config(plays="all"), seed=5), data.load(config, seed=5)):
    np.testing.assert_array_equal(
      np.asarray(fd.x_train), np.concatenate([per_role[r][0] for r in order])
    )
    np.testing.assert_array_equal(
      np.asarray(fd.x_test), np.concatenate([per_role[r][1] for r in order])
    )
    assert np.asarray(fd.client_count).tolist() == [
      sum(len(per_role[r][0]) for r in roles) for roles in dealt
    ]


def test_source_roles_are_dealt_like_a_folder_of_the_source_plays(tmp_path):
  """A half is the same data as a copy of the plays that holds only that half's plays."""
  for play in shakespeare.split_plays(shakespeare.play_names(PLAYS))["target"]:
    (tmp_path / f"{play}_gut.txt").write_bytes((PLAYS / f"{play}_gut.txt").read_bytes())
  target = _load(plays="target", num_clients=2)
  alone = _load(data_dir=str(tmp_path), num_clients=2)
  for field in ("x_train", "y_train", "client_index", "x_test", "y_test"):
    np.testing.assert_array_equal(
      np.asarray(getattr(target, field)), np.asarray(getattr(alone, field))
    )


@pytest.mark.parametrize(
  "overrides",
  [
    {"plays": "half"},
    {"plays": ""},
    {"plays": 1},
    {"plays": "source", "name": "digits", "partition": "iid"},  # only shakespeare has plays
  ],
)
def test_bad_plays_are_refused(overrides):
  with pytest.raises(ConfigError, match=r"data\.plays.*all"):
    data.load(_shakespeare_config(**overrides), seed=0)
  with pytest.raises(ConfigError, match=r"data\.plays"):
    data.validate(_shakespeare_config(**overrides))


def test_too_few_roles_in_a_half_names_the_half():
  with pytest.raises(ConfigError, match="data.plays='source'"):
    _load(plays="source", num_clients=3)  # the source fixture play has 2 roles

"""Hyperparameter sweeps: grid points over the dynamic hyperparameters.

A sweep is declared in the config as comma-separated values per hyperparameter,
`config.sweep.lr = "0.01,0.05,0.1"` (or on the command line,
`--config.sweep.lr=0.01,0.05,0.1`); the grid is the product of the swept lists.
Every point of the grid, times every seed, becomes one entry of the leading grid
axis G of ONE compiled program per algorithm (`fedqs_jax.run.train`). An algorithm
only sees the swept hyperparameters it has: the others do not multiply its grid.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import ml_collections

from fedqs_jax.errors import ConfigError

Point = dict[str, float]


def parse_values(name: str, value) -> list[float]:
  """`"0.1,0.2"`, a number or a sequence -> a list of floats ([] = not swept)."""
  if value is None or value == "":
    return []
  items = value.split(",") if isinstance(value, str) else value
  items = items if isinstance(items, list | tuple) else [items]
  try:
    return [float(v) for v in items]
  except (TypeError, ValueError):
    raise ConfigError(
      f"sweep.{name}={value!r} is invalid: must be comma-separated numbers, e.g. 0.01,0.1"
    ) from None


def points(config: ml_collections.ConfigDict) -> list[Point]:
  """The product grid of `config.sweep` ([{}] when nothing is swept)."""
  sweep = config.get("sweep") or {}
  axes = [(name, parse_values(name, sweep[name])) for name in sweep]
  axes = [(name, values) for name, values in axes if values]
  names = [name for name, _ in axes]
  return [
    dict(zip(names, combo, strict=True)) for combo in itertools.product(*[v for _, v in axes])
  ]


def restrict(grid: Sequence[Point], names: Sequence[str]) -> list[Point]:
  """The distinct points of `grid` restricted to the hyperparameters `names`, in order."""
  out: list[Point] = []
  for point in grid:
    mine = {k: v for k, v in point.items() if k in names}
    if mine not in out:
      out.append(mine)
  return out


def label(point: Point) -> str:
  """`"lr=0.1,beta=0.5"` ("" for the unswept point)."""
  return ",".join(f"{k}={v:g}" for k, v in point.items())

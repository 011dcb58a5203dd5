"""Hyperparameter sweeps: grid points over the dynamic hyperparameters.

A sweep is declared in the config as comma-separated values per hyperparameter,
namespaced by config section: `config.sweep.local.lr = "0.01,0.05,0.1"`, or on the
command line `--config.sweep.local.lr=0.01,0.05,0.1 --config.sweep.fedbuff.beta=0,0.5`;
the grid is the product of the swept lists. The dynamic (grid-sweepable) names are
the local-training ones (`local.lr`, `local.momentum`, `local.clip`) and every
algorithm's own (`fedbuff.server_lr`, `fedqs.a`...: `algorithms.dynamic_names()`).
A config file may also define `get_sweep()` returning a list of points built with
`axis`, `product` and `zip` (in the spirit of big_vision's `get_hyper`):

  def get_sweep():
    return sweep.product(
      sweep.axis("fedqs.a", [1e-3, 2e-3]),
      sweep.zip(sweep.axis("fedqs.m0", [0.1, 0.2]), sweep.axis("fedqs.k", [1, 2])),
    )

It lands in `config.sweep_points`, and the run's grid is its product with the
command-line sweep.

Any other name is a *static* config field (`sweep.axis("schedule.buffer_size", [5,
10])`, `"data.num_clients"`, `"schedule.protocol"`, `"fedqs.similarity"`...): it changes
shapes or the schedule, so `groups` splits the grid by these values (the static signature) and each
group runs as its own program(s), with its own data and schedule; the dynamic
hyperparameters of a group still share one program per algorithm.
Every point of the grid, times every seed, becomes one entry of the leading grid
axis G of ONE compiled program per algorithm (`fedqs_jax.run.train`). An algorithm
only sees the swept hyperparameters it has: the others do not multiply its grid (a
sweep of `fedbuff.server_lr` changes FedBuff's grid alone).
"""

from __future__ import annotations

import builtins
import difflib
import importlib.util
from collections.abc import Sequence

import ml_collections

from fedqs_jax import algorithms
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


def is_static(name: str) -> bool:
  """Whether a swept name is a static config field rather than a dynamic hyperparameter."""
  return name not in algorithms.dynamic_names()


def check_name(name: str) -> None:
  """Raises `ConfigError` for a swept name that is neither a hyperparameter nor a
  "section.field" (e.g. an unnamespaced `lr`), suggesting the namespaced names."""
  if "." in name:
    return
  dynamic = algorithms.dynamic_names()
  close = [n for n in dynamic if n.endswith("." + name)] or difflib.get_close_matches(
    name, list(dynamic), n=3
  )
  hint = f": did you mean {' or '.join(close)}?" if close else ""
  raise ConfigError(
    f"sweep.{name} is invalid: swept names are namespaced by config section "
    f"(local.lr, fedbuff.server_lr, schedule.buffer_size){hint}"
  )


def axis(name: str, values: Sequence) -> list[Point]:
  """One swept name: `[{name: v} for v in values]` (hyperparameters as floats)."""
  check_name(name)
  return [{name: v if is_static(name) else float(v)} for v in values]


def product(*parts: Sequence[Point]) -> list[Point]:
  """Every combination of one point from each part (the first part varies slowest)."""
  out: list[Point] = [{}]
  for part in parts:
    out = [{**a, **b} for a in out for b in part]
  return out


def zip(*parts: Sequence[Point]) -> list[Point]:
  """The i-th points of the parts merged, for parts of equal length."""
  lengths = {len(part) for part in parts}
  if len(lengths) > 1:
    raise ConfigError(f"sweep.zip needs parts of equal length, got lengths {sorted(lengths)}")
  combos = builtins.zip(*parts, strict=True)
  return [{k: v for p in combo for k, v in p.items()} for combo in combos]


def _declared(config: ml_collections.ConfigDict) -> list[tuple[str, object]]:
  """The (namespaced name, value) pairs of `config.sweep` (nested by section)."""
  out = []
  for section, fields in (config.get("sweep") or {}).items():
    if isinstance(fields, dict | ml_collections.ConfigDict):
      out += [(f"{section}.{field}", value) for field, value in fields.items()]
    else:
      check_name(section)  # an unnamespaced name: refused with a suggestion
  return out


def points(config: ml_collections.ConfigDict) -> list[Point]:
  """The grid: `config.sweep_points` x the product of `config.sweep` ([{}]: no sweep)."""
  axes = [axis(name, parse_values(name, value)) for name, value in _declared(config)]
  from_file = [dict(p) for p in (config.get("sweep_points") or [{}])]
  for point in from_file:
    for name, value in point.items():
      check_name(name)
      if not is_static(name):
        parse_values(name, [value])  # numbers only
  return product(from_file, *[a for a in axes if a])


def groups(config: ml_collections.ConfigDict) -> list[tuple[Point, ml_collections.ConfigDict]]:
  """The grid split by static signature: (static values, the config of that group).

  Each group's config has the static fields set and `sweep_points` reduced to the
  group's dynamic points (the command-line sweep stays as it is). A static name that
  is not a config field raises `ConfigError`.
  """
  file_points = [dict(p) for p in (config.get("sweep_points") or [{}])]
  signatures: dict[tuple, list[Point]] = {}
  for point in file_points:
    static = tuple((k, v) for k, v in point.items() if is_static(k))
    dynamic = {k: v for k, v in point.items() if not is_static(k)}
    signatures.setdefault(static, [])
    if dynamic not in signatures[static]:
      signatures[static].append(dynamic)
  out = []
  for static, dynamic in signatures.items():
    group = ml_collections.ConfigDict(config.to_dict())
    for name, value in static:
      section, _, field = name.rpartition(".")
      node = group
      for part in section.split("."):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
          raise ConfigError(f"sweep: {name!r} is not a config field (section {section!r})")
        node = node[part]
      if field not in node:
        raise ConfigError(f"sweep: {name!r} is not a config field")
      node[field] = value
    group.sweep_points = dynamic
    out.append((dict(static), group))
  return out


def with_file_sweep(config: ml_collections.ConfigDict, filename: str) -> ml_collections.ConfigDict:
  """`config` with `sweep_points` from the config file's `get_sweep()`, if it has one."""
  spec = importlib.util.spec_from_file_location("_fedqs_config_file", filename)
  if spec is None or spec.loader is None:
    return config
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    return config
  with config.unlocked():
    config.sweep_points = [dict(p) for p in module.get_sweep()]
  return config


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
  return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items())

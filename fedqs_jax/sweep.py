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

`experiments.main` declares the same axes with flags: `--sweep=NAME=v1,v2,...` (repeatable;
static fields and dynamic hyperparameters alike, each value parsed by the field's type)
and `--zip=A,B` (pairs swept axes, as `zip`); the axes multiply in the order given, a
zipped group at the place of its first axis. `with_flag_sweep` multiplies them into
`config.sweep_points` after the file's points, so that

  --sweep=schedule.protocol=sync,semi_async --sweep=local.lr=0.05,0.1 --sweep=fedqs.a=1,2 \
      --sweep=fedqs.k=3,4 --zip=fedqs.a,fedqs.k

is `product(axis("schedule.protocol", ["sync", "semi_async"]), axis("local.lr", [0.05, 0.1]),
zip(axis("fedqs.a", [1, 2]), axis("fedqs.k", [3, 4])))` in `get_sweep()`, to the byte.

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


# ----------------------------------------------------------------------------- from flags

_BOOLS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}
_UNSWEPT_SECTIONS = ("sweep", "variants")  # no axis names a field under these


def split_values(text: str) -> list[str]:
  """`"a,b"` -> `["a", "b"]`, split at the commas outside brackets, so that tuple values
  keep theirs: `"(8,),(16,16)"` -> `["(8,)", "(16,16)"]`."""
  out, depth, current = [], 0, []
  for ch in text:
    depth += (ch in "([{") - (ch in ")]}")
    if ch == "," and depth <= 0:
      out.append("".join(current).strip())
      current = []
    else:
      current.append(ch)
  return [*out, "".join(current).strip()]


def _static_paths(node: ml_collections.ConfigDict, prefix: str = ""):
  """The dotted paths of the fields (not sections) a static axis may name."""
  for key in node:
    if not prefix and key in _UNSWEPT_SECTIONS:
      continue
    if isinstance(node[key], ml_collections.ConfigDict):
      yield from _static_paths(node[key], f"{prefix}{key}.")
    elif prefix:  # a top-level field (seed, num_seeds...) is no axis: `groups` needs a section
      yield prefix + key


def _field(config: ml_collections.ConfigDict, name: str):
  """(section node, field name) of the static field `name`, or None."""
  section, _, field = name.rpartition(".")
  node = config
  for part in section.split(".") if section else []:
    if part in _UNSWEPT_SECTIONS and node is config:
      return None
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      return None
    node = node[part]
  if not section or field not in node or isinstance(node[field], ml_collections.ConfigDict):
    return None
  return node, field


def _field_type(node: ml_collections.ConfigDict, field: str):
  try:
    return node.get_type(field)
  except Exception:  # an unusual field (a reference...): parsed as a number or else text
    return object


def _is_number(v) -> bool:
  return isinstance(v, int | float) and not isinstance(v, bool)


def _parse_static(kind, current, text: str):
  """`text` as a value of a field of type `kind` (now `current`); (value, None) or (None,
  what the values must be)."""
  if kind is bool:
    value = _BOOLS.get(text.lower())
    return (value, None) if value is not None else (None, "True or False")
  if kind is int:
    try:
      return int(text, 10), None
    except ValueError:
      return None, "integers"
  if kind is float:
    try:
      return float(text), None
    except ValueError:
      return None, "numbers"
  if kind is str:
    return text, None
  if kind is tuple:
    from ml_collections.config_flags import tuple_parser

    try:
      value = tuple_parser.TupleParser().parse(text)
    except Exception:
      value = None
    numbers = current and all(_is_number(v) for v in current)  # e.g. model.hidden
    if value is None or (numbers and not all(_is_number(v) for v in value)):
      return None, "tuples" + (" of numbers" if numbers else "") + ", e.g. (8,),(16,16)"
    return value, None
  for parse in (lambda t: int(t, 10), float):
    try:
      return parse(text), None
    except ValueError:
      pass
  return text, None


def _flag_axis(config: ml_collections.ConfigDict, spec: str) -> tuple[str, list[Point]]:
  """One `--sweep=NAME=v1,v2,...` as (NAME, its axis), each value parsed by NAME's type."""

  def bad(reason: str) -> ConfigError:
    return ConfigError(f"--sweep={spec} is invalid: {reason}")

  name, eq, text = spec.partition("=")
  name = name.strip()
  if not eq or not name:
    raise bad("write --sweep=NAME=v1,v2,..., e.g. --sweep=local.lr=0.01,0.1")
  if not text.strip():
    raise bad(f"no values: write --sweep={name}=v1,v2,...")
  texts = split_values(text)
  if "" in texts:
    raise bad(f"value {texts.index('') + 1} is empty: write --sweep={name}=v1,v2,...")
  dynamic = algorithms.dynamic_names()
  values = []
  if name in dynamic:
    allowed = dynamic[name]
    for t in texts:
      try:
        value = float(t)
      except ValueError:
        raise bad(f"{name} takes numbers, got {t!r}") from None
      if not allowed.contains(value):
        raise bad(f"{name}={value:g} is outside its range: must be in {allowed}")
      values.append(value)
  else:
    found = _field(config, name)
    if found is None:
      candidates = [*dynamic, *_static_paths(config)]
      near = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
      hint = f": did you mean {near[0]}?" if near else " (e.g. local.lr, schedule.buffer_size)"
      raise bad(f"{name} is neither a config field nor a hyperparameter{hint}")
    node, field = found
    kind = _field_type(node, field)
    for t in texts:
      value, expected = _parse_static(kind, node[field], t)
      if expected is not None:
        raise bad(f"{name} takes {expected}, got {t!r}")
      values.append(value)
  repeated = [t for i, t in enumerate(texts) if values.index(values[i]) != i]
  if repeated:
    raise bad(f"{name} lists {repeated[0]} twice: give each value once")
  return name, [{name: v} for v in values]


def from_flags(
  config: ml_collections.ConfigDict, sweeps: Sequence[str], zips: Sequence[str] = ()
) -> list[Point]:
  """The points of `--sweep=NAME=v1,v2,...` flags (`sweeps`) paired by `--zip=A,B,...`
  flags (`zips`): the product of the axes in their order, each zipped group at the
  place of its first axis. Raises `ConfigError` for a bad flag: a malformed one, an
  unknown name (with the nearest), a value of the wrong type or outside a
  hyperparameter's range, a name swept twice, a zip of an axis that is not swept or
  zipped twice, or of axes of different lengths."""
  axes: dict[str, list[Point]] = {}
  for spec in sweeps:
    name, values = _flag_axis(config, spec)
    if name in axes:
      raise ConfigError(
        f"--sweep={spec} is invalid: {name} is swept by another --sweep too: give its values once"
      )
    axes[name] = values
  zipped: dict[str, list[str]] = {}  # axis -> the names of its zip group
  for spec in zips:
    names = [n.strip() for n in spec.split(",")]
    if len(names) < 2 or "" in names:
      raise ConfigError(f"--zip={spec} is invalid: name two or more --sweep axes, e.g. --zip=A,B")
    for n in names:
      if n not in axes:
        hint = _swept_hint(n, list(axes))
        raise ConfigError(f"--zip={spec} is invalid: {n} is not swept by a --sweep flag{hint}")
      if n in zipped or names.count(n) > 1:
        raise ConfigError(f"--zip={spec} is invalid: {n} is zipped twice: zip each axis once")
    lengths = {n: len(axes[n]) for n in names}
    if len(set(lengths.values())) > 1:
      shown = ", ".join(f"{n} has {k}" for n, k in lengths.items())
      raise ConfigError(f"--zip={spec} is invalid: zipped axes need equally many values: {shown}")
    zipped |= {n: names for n in names}
  parts = []
  for name, values in axes.items():
    if name not in zipped:
      parts.append(values)
    elif zipped[name][0] == name:
      parts.append(zip(*[axes[n] for n in zipped[name]]))
  return product(*parts)


def _swept_hint(name: str, swept: Sequence[str]) -> str:
  """`: did you mean X?` among `swept`, else `(swept: ...)` or `(nothing is swept)`."""
  near = difflib.get_close_matches(name, list(swept), n=1, cutoff=0.6)
  if near:
    return f": did you mean {near[0]}?"
  return f" (swept: {', '.join(swept)})" if swept else " (no --sweep flag is given)"


def with_flag_sweep(
  config: ml_collections.ConfigDict, sweeps: Sequence[str], zips: Sequence[str] = ()
) -> ml_collections.ConfigDict:
  """`config` with the `--sweep`/`--zip` flags' points (`from_flags`) multiplied into
  `sweep_points` after the config file's; a name the file or `--config.sweep` already
  sweeps is refused. No flags: `config` unchanged."""
  if not sweeps and not zips:
    return config
  flag_points = from_flags(config, sweeps, zips)
  file_points = [dict(p) for p in (config.get("sweep_points") or [{}])]
  by_file = {k for p in file_points for k in p}
  by_override = {name for name, value in _declared(config) if parse_values(name, value)}
  for spec in sweeps:
    name = spec.partition("=")[0].strip()
    source = (
      "the config file's get_sweep()" if name in by_file
      else f"--config.sweep.{name}" if name in by_override
      else None
    )  # fmt: skip
    if source:
      raise ConfigError(
        f"--sweep={spec} is invalid: {name} is swept by {source} already: sweep it once"
      )
  with config.unlocked():
    config.sweep_points = product(file_points, flag_points)
  return config


def check_groups(config: ml_collections.ConfigDict) -> None:
  """Validates the config of every static group (`groups`: the config with the group's
  static values set) as a run validates its config, before anything is loaded or
  compiled. An error that the config without the sweep does not share names the group:
  `sweep group schedule.buffer_size=16: schedule.buffer_size=16 is invalid: ...`."""
  from fedqs_jax import config as config_lib  # it imports this module

  found = groups(config)
  if len(found) == 1 and not found[0][0]:
    return  # no static field swept: the run validates the config itself
  try:
    config_lib.validate(config)
    base_error = None
  except ConfigError as e:
    base_error = str(e)
  for static, group in found:
    try:
      config_lib.validate(group)
    except ConfigError as e:
      if str(e) == base_error:
        raise
      raise ConfigError(f"sweep group {label(static)}: {e}") from None


def describe(config: ml_collections.ConfigDict, max_groups: int = 20) -> str:
  """The resolved grid, for printing before a run: its static groups (their labels),
  each algorithm's points per group and the seeds. "" when nothing is swept."""
  from fedqs_jax import config as config_lib  # it imports this module

  if points(config) == [{}]:
    return ""
  names = config_lib.algorithm_names(config)
  seeds = config.num_seeds
  found = groups(config)
  static = len(found) > 1 or bool(found[0][0])
  head = f"{len(found)} static group{'s' * (len(found) != 1)}" if static else "no static field"
  entries = 0
  lines = []
  for i, (values, group) in enumerate(found):
    counts = []
    for name in names:
      hparams = algorithms.hparam_names(config_lib.resolve(name, group)[0])
      counts.append((name, len(restrict(points(group), list(hparams)))))
    entries += sum(n for _, n in counts) * seeds
    if i < max_groups:
      each = ", ".join(f"{name} {n} point{'s' * (n != 1)}" for name, n in counts)
      lines.append(f"  {label(values) + ': ' if static else ''}{each}")
  if len(found) > max_groups:
    lines.append(f"  ... and {len(found) - max_groups} more groups")
  programs = len(found) * len(names)
  return "\n".join(
    [
      f"sweep: {head} x {seeds} seed{'s' * (seeds != 1)} = {entries} trained grid entries in "
      f"{programs} program{'s' * (programs != 1)} (one per group and algorithm)",
      *lines,
    ]
  )


def describe_memory(estimates: Sequence[tuple[Point, str, dict]]) -> str:
  """One line for the program with the largest device-memory estimate, of
  (static group values, algorithm, `program.memory_estimate`) triples: the groups run
  one after another, so the largest one is the run's peak."""
  static, name, e = max(estimates, key=lambda t: t[2].get("per_device", t[2]["total"]))
  where = f"{name}[{label(static)}]" if static else name
  gib, mib = 2.0**30, 2.0**20
  return (
    f"memory: largest program {where}: about {e.get('per_device', e['total']) / gib:.3f} GiB "
    f"per device ({e.get('points_per_device', e['points'])} grid entries x "
    f"{e['per_point'] / mib:.2f} MiB + {e['shared_data'] / mib:.2f} MiB of data)"
  )

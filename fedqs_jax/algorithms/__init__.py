"""Federated algorithms, registered by name from their specs.

Each module of this package exports `SPECS`, a tuple of `base.AlgorithmSpec`: the
builder, the config section with its defaults, the dynamic hyperparameters with their
ranges, the static options with their allowed values, and what the algorithm needs
from the run. The registry is every module's specs (found by importing the package's
modules), so an algorithm is one module: its config section, validation, sweepable
names and CSV columns all derive from its spec. `register` adds a spec from outside
the package (a user's algorithm, or a test's).
"""

from __future__ import annotations

import importlib
import pkgutil

import ml_collections
import numpy as np

from fedqs_jax.algorithms.base import (
  LOCAL_HPARAMS,
  LOCAL_SECTION,
  Algorithm,
  AlgorithmSpec,
  Arrivals,
  Broadcast,
  BuildContext,
  LocalTask,
  Range,
)
from fedqs_jax.errors import ConfigError, check

__all__ = [
  "Algorithm",
  "AlgorithmSpec",
  "Arrivals",
  "Broadcast",
  "BuildContext",
  "LocalTask",
  "Range",
  "build",
  "dynamic_names",
  "hparam_range",
  "names",
  "register",
  "section_defaults",
  "spec",
  "validate",
]

_SPECS: dict[str, AlgorithmSpec] = {}


def register(algorithm_spec: AlgorithmSpec) -> AlgorithmSpec:
  """Adds `algorithm_spec` to the registry (its name must be new)."""
  s = algorithm_spec
  if s.name in _SPECS and _SPECS[s.name] is not s:
    raise ValueError(f"an algorithm named {s.name!r} is already registered")
  if s.section == LOCAL_SECTION or set(s.hparams) & set(LOCAL_HPARAMS):
    raise ValueError(f"{s.name}: section 'local' and hparams {tuple(LOCAL_HPARAMS)} are shared")
  for other in _SPECS.values():  # algorithms sharing a section must agree on its fields
    if other.section == s.section:
      for name in set(other.defaults()) & set(s.defaults()):
        if other.defaults()[name] != s.defaults()[name]:
          raise ValueError(f"{s.name} and {other.name} disagree on {s.section}.{name}'s default")
  _SPECS[s.name] = s
  return s


def _discover() -> None:
  for module in pkgutil.iter_modules(__path__):
    for s in getattr(importlib.import_module(f"{__name__}.{module.name}"), "SPECS", ()):
      register(s)


_discover()


def names() -> tuple[str, ...]:
  return tuple(_SPECS)


def spec(name: str) -> AlgorithmSpec:
  check(name in _SPECS, "algorithms", name, f"each must be one of {names()}")
  return _SPECS[name]


def section_defaults() -> dict[str, dict]:
  """Every algorithm config section with its fields' defaults (`default.py` uses it)."""
  out: dict[str, dict] = {}
  for s in _SPECS.values():
    out.setdefault(s.section, {}).update(s.defaults())
  return out


def dynamic_names() -> dict[str, Range]:
  """Every grid-sweepable name, namespaced (`local.lr`, `fedbuff.server_lr`), with its range."""
  out = {f"{LOCAL_SECTION}.{k}": r for k, r in LOCAL_HPARAMS.items()}
  for s in _SPECS.values():
    out.update({f"{s.section}.{k}": r for k, (_, r) in s.hparams.items()})
  return out


def hparam_names(name: str) -> dict[str, str]:
  """The namespaced names of algorithm `name`'s hyperparameters -> their program keys."""
  s = spec(name)
  return {
    **{f"{LOCAL_SECTION}.{k}": k for k in LOCAL_HPARAMS},
    **{f"{s.section}.{k}": k for k in s.hparams},
  }


def hparam_range(name: str) -> Range | None:
  """The allowed range of a namespaced dynamic hyperparameter (None: not one)."""
  return dynamic_names().get(name)


def _check_value(field: str, value, allowed) -> None:
  if allowed is None:
    check(isinstance(value, bool | np.bool_), field, value, "must be True or False")
  elif isinstance(allowed, Range):
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    check(ok and allowed.contains(float(value)), field, value, f"must be in {allowed}")
  else:
    check(value in allowed, field, value, f"must be one of {tuple(allowed)}")


def validate(name: str, config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` for the first invalid field of algorithm `name`'s section."""
  s = spec(name)
  check(s.section in config, s.section, None, f"{name} needs the config section {s.section!r}")
  c = config[s.section]
  for field, (_, allowed) in s.options.items():
    check(field in c, f"{s.section}.{field}", None, "is missing")
    _check_value(f"{s.section}.{field}", c[field], allowed)
  for field, (_, allowed) in s.hparams.items():
    check(field in c, f"{s.section}.{field}", None, "is missing")
    _check_value(f"{s.section}.{field}", c[field], allowed)
  if s.check is not None:
    s.check(c)


def build(
  name: str, config: ml_collections.ConfigDict, context: BuildContext | None = None
) -> tuple[Algorithm, dict[str, float]]:
  """The algorithm `name` and its own dynamic hyperparameters (unprefixed) from `config`.

  `context` defaults to the run's (`fedqs_jax.config.build_context`).
  """
  validate(name, config)
  if context is None:
    from fedqs_jax import config as config_lib  # the run's latencies and routing

    context = config_lib.build_context(config)
  s = spec(name)
  return s.build(config[s.section], context), s.hparam_values(config[s.section])


def unknown(name: str) -> ConfigError:
  """The error for a sweep name that is not a hyperparameter (with the nearest names)."""
  import difflib

  close = difflib.get_close_matches(name, list(dynamic_names()), n=3)
  hint = f"; did you mean {', '.join(close)}?" if close else ""
  return ConfigError(f"sweep.{name} is invalid: not a hyperparameter of any algorithm{hint}")

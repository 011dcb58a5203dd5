"""What the command lines share: bad input is one `error: ...` line on stderr and exit 2.

`run(main, flags_parser)` is `absl.app.run` where a `ConfigError` and every flag error
(an unknown flag, a bad value, a missing required flag) print one line and exit 2,
instead of absl's usage text (exit 1) or a traceback. `load_config` and
`check_overrides` read `experiments.main`'s `--config=file[:arg]` and check its
`--config.<field>` overrides against it before absl parses them. The path checks tell
an unwritable output before anything is computed. Nothing here imports JAX.
"""

from __future__ import annotations

import difflib
import importlib.machinery
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import ml_collections
from absl import app, flags, logging
from ml_collections.config_flags import tuple_parser

from fedqs_jax import compilation_cache
from fedqs_jax.errors import ConfigError, check

# `--config.a.b=v`, `--config.a.b v`, `--noconfig.a.b` (as ml_collections' config_flags).
_OVERRIDE = re.compile(r"^--?(no)?config\.([^=]+)(=(.*))?$", re.DOTALL)
_CONFIG = re.compile(r"^--?config(=(.*))?$", re.DOTALL)


def one_line(message) -> str:
  """`message` (any text or exception) on one line."""
  return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def fail(message) -> NoReturn:
  """Prints `error: <message>` (one line) to stderr and exits 2."""
  print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
  sys.exit(2)


def did_you_mean(name: str, candidates: Sequence[str], prefix: str = "", known=None) -> str:
  """`: did you mean <prefix><nearest>?` (difflib), or else `(known: <known>)`, by default
  the candidates."""
  candidates = sorted(str(c) for c in candidates)
  near = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
  if near:
    return f": did you mean {prefix}{near[0]}?"
  if known is None:
    known = ", ".join(candidates[:20]) + (", ..." if len(candidates) > 20 else "")
  return f" (known: {known})" if known else ""


def flag_error(e: Exception) -> str:
  """One line for an absl flag-parsing error."""
  if isinstance(e, flags.UnrecognizedFlagError):
    name = e.flagname
    names = [n for n in flags.FLAGS if not n.startswith("config.")]
    return f"--{name} is an unknown flag{did_you_mean(name, names, '--', known='see --helpshort')}"
  return one_line(e)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, where every error (not --help) is one line and exit 2."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # flags.Error, and what config_flags raises on a bad override
    fail(flag_error(e))


def run(main: Callable[[list[str]], None], flags_parser=parse_flags) -> None:
  """`absl.app.run(main)` with the persistent compilation cache on (`--compilation_cache`);
  a `ConfigError` from `main` is one line and exit 2."""

  def checked_main(argv):
    if not flags.FLAGS["verbosity"].present:  # JAX and orbax log routine steps at INFO
      logging.set_verbosity(logging.WARNING)
    try:
      compilation_cache.enable_from_flags()  # before anything compiles; never in --workdir
      return main(argv)
    except ConfigError as e:
      fail(e)

  app.run(checked_main, flags_parser=flags_parser)


def check_no_arguments(argv: list[str]) -> None:
  """Positional arguments are mistakes (a flag without its `--`): refuse them."""
  check(len(argv) <= 1, "arguments", " ".join(argv[1:]), "every option is a --flag")


# ----------------------------------------------------------------------------- --config


def split_config(argv: list[str], default: str) -> tuple[list[str], str]:
  """(argv without `--config=<spec>` / `--config <spec>`, the last spec or `default`)."""
  out, spec, i = argv[:1], default, 1
  while i < len(argv):
    arg = argv[i]
    if arg == "--":
      out += argv[i:]
      break
    match = _CONFIG.match(arg)
    if match is None:
      out.append(arg)
      i += 1
    elif match.group(1) is not None:
      spec, i = match.group(2), i + 1
    elif i + 1 < len(argv):
      spec, i = argv[i + 1], i + 2
    else:
      raise ConfigError("--config needs a value: a config file, e.g. experiments/configs/x.py")
  return out, spec


def load_config(spec: str) -> tuple[ml_collections.ConfigDict, str]:
  """`get_config(arg)` of the config file of `spec` ("path.py" or "path.py:arg"), and its
  path; `ConfigError` naming `spec` if the file is missing or broken or refuses `arg`."""
  path, colon, arg = spec.partition(":")
  args = (arg,) if colon else ()
  check(bool(path), "config", spec, "must be a config file, e.g. experiments/configs/default.py")
  check(not os.path.isdir(path), "config", spec, "is a folder, not a config file")
  check(os.path.isfile(path), "config", spec, "no such config file")

  def broken(what: str, e: BaseException) -> ConfigError:
    return ConfigError(f"config={spec!r} is invalid: {what} {type(e).__name__}: {one_line(e)}")

  try:
    loader = importlib.machinery.SourceFileLoader("_fedqs_cli_config", path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(
      f"config={spec!r} is invalid: line {e.lineno}: {e.msg} (a Python syntax error)"
    ) from None
  except Exception as e:  # a config file is user input: any failure is a bad config
    raise broken("loading it raised", e) from None
  get_config = getattr(module, "get_config", None)
  check(callable(get_config), "config", spec, "the file defines no get_config()")
  if args:
    try:
      inspect.signature(get_config).bind(*args)
    except TypeError:
      check(False, "config", spec, f"{os.path.basename(path)}'s get_config() takes no :argument")
  try:
    config = get_config(*args)
  except Exception as e:
    if isinstance(e, ValueError):  # e.g. fedqs_cifar10.py's "takes 'paper' or 'smoke'"
      raise ConfigError(f"config={spec!r} is invalid: {one_line(e)}") from None
    raise broken("get_config() raised", e) from None
  check(isinstance(config, ml_collections.ConfigDict), "config", spec,
        f"get_config() returned a {type(config).__name__}, not a ConfigDict")  # fmt: skip
  return config, path


def _type(node: ml_collections.ConfigDict, key: str):
  try:
    return node.get_type(key)
  except Exception:  # an unusual field (a reference to another field...): no type check
    return None


def _field_paths(node: ml_collections.ConfigDict, prefix: str = ""):
  for key in node:
    yield prefix + key
    if isinstance(node[key], ml_collections.ConfigDict):
      yield from _field_paths(node[key], f"{prefix}{key}.")


def nearest_field(node: ml_collections.ConfigDict, name: str) -> str | None:
  """The field path under `node` nearest to the dotted `name` (difflib, on the whole path
  or on its last part: `lrr` finds `lr` and, in a nested section, `local.lr`), if any is
  near enough."""

  def score(path: str) -> tuple[float, int]:
    whole = difflib.SequenceMatcher(None, name, path).ratio()
    last = difflib.SequenceMatcher(None, name.split(".")[-1], path.split(".")[-1]).ratio()
    return max(whole, last), -path.count(".")

  paths = list(_field_paths(node))
  best = max(paths, key=score, default=None)
  return best if best is not None and score(best)[0] >= 0.6 else None


def check_overrides(config: ml_collections.ConfigDict, argv: list[str]) -> None:
  """Raises `ConfigError` for a `--config.<path>` override of an unknown field (naming the
  nearest one) or a non-number for a numeric field. Other values are left to absl."""
  for i, arg in enumerate(argv[1:], 1):
    if arg == "--":
      return
    match = _OVERRIDE.match(arg)
    if match is None:
      continue
    negated, path, has_value, value = match.group(1), match.group(2), match.group(3), match.group(4)
    if has_value is None and not negated and i + 1 < len(argv) and argv[i + 1][:1] != "-":
      value = argv[i + 1]  # `--config.a.b v`
    node, where, parts = config, "config", path.split(".")
    _check_static_sweep(config, parts, value if not negated else None)
    for depth, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict):
        break  # inside a tuple or object value: config_flags decides
      if part not in node:
        near = nearest_field(node, ".".join(parts[depth:]))
        hint = f": did you mean {where}.{near}?" if near else f" ({where} has {', '.join(node)})"
        raise ConfigError(f"{where}.{part} is an unknown field{hint}")
      parent, node, where = node, node[part], f"{where}.{part}"
    else:
      last = path.rsplit(".", 1)[-1]
      if value is not None and not negated:
        _check_value(where.removeprefix("config."), _type(parent, last), parent[last], value)


def _is_field(config: ml_collections.ConfigDict, parts: Sequence[str]) -> bool:
  node = config
  for part in parts:
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return not isinstance(node, ml_collections.ConfigDict)


def _check_static_sweep(config: ml_collections.ConfigDict, parts: list[str], value) -> None:
  """`--config.sweep.<name>` takes the dynamic hyperparameters only (the fields of
  `config.sweep`); for a static config field (`schedule.protocol`) name the flag that
  sweeps it: `--sweep=schedule.protocol=v1,v2`."""
  if len(parts) < 3 or parts[0] != "sweep" or _is_field(config, parts):
    return
  name = ".".join(parts[1:])
  if parts[1] != "sweep" and _is_field(config, parts[1:]):
    raise ConfigError(
      f"config.sweep.{name} is not a --config.sweep name: --config.sweep takes the "
      f"hyperparameters swept within one program (local.lr, fedbuff.beta...), and {name} is "
      f"a config field, swept by --sweep={name}={value or 'v1,v2'}"
    )


def _is_number(v) -> bool:
  return isinstance(v, int | float) and not isinstance(v, bool)


def _check_value(field: str, kind, current, value: str) -> None:
  """A number for a numeric field, and numbers for a tuple of numbers (e.g. model.hidden),
  as absl and config_flags parse them."""
  if kind in (int, float):
    parser = flags.IntegerParser() if kind is int else flags.FloatParser()
    try:
      parser.parse(value)
      ok = True
    except (ValueError, TypeError):
      ok = False
    noun = "an integer" if kind is int else "a number"
  elif kind is tuple and current and all(_is_number(v) for v in current):
    try:
      parsed = tuple_parser.TupleParser().parse(value)
    except Exception:
      parsed = ("",)
    ints = all(isinstance(v, int) for v in current)
    ok = all(_is_number(v) and (isinstance(v, int) or not ints) for v in parsed)
    noun = f"{'integers' if ints else 'numbers'}, e.g. {','.join(map(str, current))}"
  else:
    return
  check(ok, field, value, f"must be {noun}")


# ----------------------------------------------------------------------------- output paths


def _nearest_existing(path: str) -> str:
  """`path` or its nearest existing ancestor (absolute)."""
  path = os.path.abspath(path)
  while not os.path.lexists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def check_writable_folder(field: str, path: str) -> None:
  """Raises `ConfigError` unless `path` is a writable folder or one that can be created
  (its nearest existing ancestor is a writable folder)."""
  check(bool(path), field, path, "must be a folder path")
  if os.path.lexists(path):
    check(os.path.isdir(path), field, path, "exists and is not a folder")
    check(os.access(path, os.W_OK | os.X_OK), field, path, "is a folder that is not writable")
    return
  ancestor = _nearest_existing(path)
  check(os.path.isdir(ancestor), field, path,
        f"cannot be created: {ancestor} is a file, not a folder")  # fmt: skip
  check(os.access(ancestor, os.W_OK | os.X_OK), field, path,
        f"cannot be created: {ancestor} is not writable")  # fmt: skip


def check_writable_file(field: str, path: str) -> None:
  """Raises `ConfigError` unless a file can be written (atomically) at `path`: it is not a
  folder, its folder exists and is writable, and an existing file there is writable."""
  check(bool(path), field, path, "must be a file path")
  check(not os.path.isdir(path), field, path, "is a folder: give a file path")
  folder = os.path.dirname(os.path.abspath(path))
  check(os.path.isdir(folder), field, path,
        f"its folder {os.path.dirname(path) or folder} does not exist")  # fmt: skip
  check(os.access(folder, os.W_OK | os.X_OK), field, path,
        f"its folder {os.path.dirname(path) or folder} is not writable")  # fmt: skip
  if os.path.lexists(path):
    check(os.path.isfile(path) and os.access(path, os.W_OK), field, path,
          "exists and is not a writable file")  # fmt: skip


def config_parser(default: str, files: list[str]) -> Callable[[list[str]], list[str]]:
  """The `flags_parser` of a CLI with a `--config=file.py[:arg]` flag (default `default`):
  it loads the file and checks its `--config.<field>` overrides, then lets absl parse the
  flags; any bad input is one `error:` line and exit 2, before anything runs. The file's
  path is appended to `files`.

  (`config_flags.DEFINE_config_file` would load the file and apply the overrides when the
  CLI module is imported, where a bad override or a broken file is a traceback.)
  """
  from ml_collections import config_flags

  def parse(argv: list[str]) -> list[str]:
    try:
      argv, spec = split_config(argv, default)
      config, path = load_config(spec)
      check_overrides(config, argv)
    except ConfigError as e:
      fail(e)
    files.append(path)
    try:
      config_flags.DEFINE_config_dict(
        "config", config, "The experiment config: --config=file.py[:arg], default " + default,
        sys_argv=argv,
      )  # fmt: skip
    except Exception as e:  # config_flags applies the overrides here
      fail(flag_error(e))
    return parse_flags(argv)

  return parse

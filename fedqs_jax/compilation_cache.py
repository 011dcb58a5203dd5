"""JAX's persistent compilation cache, on by default for the command lines and benchmarks.

Most of a small CPU run's wall time is XLA compiling the engine's programs; with the cache,
rerunning or resuming a config loads them from disk. The folder is, first match wins:

  1. the `--compilation_cache` flag (defined here, so every CLI that imports this module has
     it): a folder, or `off`;
  2. the environment variable `FEDQS_JAX_COMPILATION_CACHE`: a folder, or `off` / `0`;
  3. `$XDG_CACHE_HOME/fedqs_jax/xla`, else `~/.cache/fedqs_jax/xla`.

A cache folder inside a run's workdir is refused (`ConfigError` naming the flag): a workdir
holds one run's outputs and `--overwrite` deletes them. A folder that cannot be created or
written is one warning, and the run goes on without a cache. Every program is cached,
whatever its compile time (JAX's default skips those under 1 s, most of a small run's).

The cache is trusted: JAX runs what it loads from it, so keep it a folder only you can write.
`enable` configures JAX before the first compile; nothing here imports JAX at import time.
"""

from __future__ import annotations

import os
import sys
import tempfile

from absl import flags, logging

from fedqs_jax.errors import ConfigError

ENV = "FEDQS_JAX_COMPILATION_CACHE"
FLAG = "compilation_cache"
OFF = ("off", "0", "false", "no", "none")

flags.DEFINE_string(
  FLAG,
  None,
  "Folder of JAX's persistent compilation cache, or `off`. Default: $" + ENV + ", else "
  "$XDG_CACHE_HOME/fedqs_jax/xla (~/.cache/fedqs_jax/xla).",
)

_warned: set[str] = set()


def default_folder() -> str:
  """`$XDG_CACHE_HOME/fedqs_jax/xla`, or `~/.cache/fedqs_jax/xla`."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "fedqs_jax", "xla")


def resolve(setting: str | None = None) -> tuple[str | None, str]:
  """(the cache folder, absolute, or None for off; where it came from: `--compilation_cache`,
  `$FEDQS_JAX_COMPILATION_CACHE` or `default`) for an explicit `setting` (a folder or
  `off`), else the environment variable, else the default folder."""
  if setting is not None and setting.strip():
    value, source = setting.strip(), f"--{FLAG}"
  elif os.environ.get(ENV, "").strip():
    value, source = os.environ[ENV].strip(), f"${ENV}"
  else:
    return os.path.abspath(default_folder()), "default"
  if value.lower() in OFF:
    return None, source
  return os.path.abspath(os.path.expanduser(value)), source


def _inside(path: str, folder: str) -> bool:
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_outside_workdir(folder: str | None, workdir: str | None, source: str = "") -> None:
  """Raises `ConfigError` naming `--compilation_cache` if the cache `folder` is the run's
  `workdir` or inside it."""
  if folder is None or not workdir or not _inside(folder, workdir):
    return
  came = "" if source == f"--{FLAG}" else f" (from {source})" if source else ""
  raise ConfigError(
    f"{FLAG}={folder!r}{came} is invalid: it is inside --workdir={workdir!r}, whose files "
    f"belong to one run; give --{FLAG}=<a folder outside the workdir> or --{FLAG}=off"
  )


def _writable(folder: str) -> str | None:
  """None if `folder` exists or can be created and a file can be written in it, else why."""
  try:
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
      pass
  except OSError as e:
    return e.strerror or type(e).__name__
  return None


def _configure(folder: str | None) -> None:
  """Points JAX's persistent cache at `folder` (None: no persistent cache; JAX is not
  imported for that: unconfigured, it has none)."""
  if folder is None and "jax" not in sys.modules:
    return
  import jax
  from jax.experimental.compilation_cache import compilation_cache as jax_cache

  jax_cache.reset_cache()  # JAX binds the cache at the first compile: rebind it
  if folder is None:
    jax.config.update("jax_enable_compilation_cache", False)
    return
  jax_cache.set_cache_dir(folder)
  jax.config.update("jax_enable_compilation_cache", True)
  # JAX skips programs that compile in under 1 s: most of a small run's, together seconds.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def enable(setting: str | None = None, workdir: str | None = None) -> str | None:
  """Turns JAX's persistent compilation cache on (or off) before anything is compiled.

  `setting`: a folder or `off`; None: `$FEDQS_JAX_COMPILATION_CACHE`, else the default
  folder (`resolve`). Raises `ConfigError` if the folder is inside `workdir`. A folder that
  cannot be created or written is one warning and no cache. Returns the folder used (None:
  no cache).
  """
  folder, source = resolve(setting)
  check_outside_workdir(folder, workdir, source)
  if folder is not None:
    why = _writable(folder)
    if why is not None:
      if folder not in _warned:
        _warned.add(folder)
        logging.warning(
          "compilation cache %s (%s) cannot be written (%s): running without a cache "
          "(--%s=off silences this)", folder, source, why, FLAG,
        )  # fmt: skip
      folder = None
  _configure(folder)
  return folder


def enable_from_flags(workdir: str | None = None) -> str | None:
  """`enable` with the parsed `--compilation_cache` flag, refusing a folder inside `workdir`
  (by default the CLI's `--workdir` flag, where it has one)."""
  if workdir is None and "workdir" in flags.FLAGS:
    workdir = flags.FLAGS["workdir"].value
  return enable(flags.FLAGS[FLAG].value, workdir)

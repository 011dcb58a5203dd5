"""What the benchmark programs share: timing, plain-text tables, the machine's state,
the compilation cache, and the schedule phase's arrivals per second.

The benchmarks run as scripts (`python benchmarks/<name>.py`), so this module is
imported as their sibling. It imports JAX only inside the functions that use it, so a
parent process that only spawns measured children (grid_scaling) stays light.
"""

from __future__ import annotations

import os
import statistics
import time
from importlib.metadata import version as _metadata_version
from typing import Any

import numpy as np


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
  """(result, seconds) of `fn(*args)`, blocking on the result."""
  import jax

  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args, **kwargs))
  return out, time.perf_counter() - t0


def table(header: list[str], rows: list[list[Any]], left: int = 1) -> str:
  """A plain-text table; the first `left` columns are left-aligned."""
  widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

  def line(r):
    cells = [
      str(c).ljust(w) if i < left else str(c).rjust(w)
      for i, (c, w) in enumerate(zip(r, widths, strict=True))
    ]
    return "  ".join(cells).rstrip()

  sep = "  ".join("-" * w for w in widths)
  return "\n".join([line(header), sep, *[line(r) for r in rows]])


def loadavg() -> float | None:
  """The 1-minute load average (None where the OS gives none)."""
  try:
    return round(os.getloadavg()[0], 2)
  except OSError:
    return None


def version(package: str) -> str:
  """An installed package's version ("?" if unknown)."""
  try:
    return _metadata_version(package)
  except Exception:  # noqa: BLE001
    return "?"


def compilation_cache(times_compiles: bool = True) -> str | None:
  """Enables JAX's persistent compilation cache for a benchmark: call it at the start of
  `main`, before anything compiles. Returns the folder (None: no cache).

  A benchmark that times compiles (`times_compiles`) gets a fresh, empty temporary folder,
  removed at exit: its compiles stay cold, each paying the write of its entry as a first
  run does with the cache on (the default of every run), and the user's cache neither
  serves nor grows. Others use the user's cache (`fedqs_jax.compilation_cache.enable`:
  `$FEDQS_JAX_COMPILATION_CACHE`, else `~/.cache/fedqs_jax/xla`).
  `$FEDQS_JAX_COMPILATION_CACHE=off` turns it off for every benchmark.
  """
  import atexit
  import shutil
  import tempfile

  from fedqs_jax import compilation_cache

  if not times_compiles or compilation_cache.resolve()[0] is None:
    return compilation_cache.enable()
  folder = tempfile.mkdtemp(prefix="fedqs_bench_xla_")
  atexit.register(shutil.rmtree, folder, ignore_errors=True)
  return compilation_cache.enable(folder)


def measure_schedule(
  time_model, protocol: str, num_rounds: int, k: int, seeds: int, **protocol_kwargs
) -> dict:
  """Arrivals per second of the jitted, seed-vmapped schedule phase, after its compile.

  `protocol_kwargs` go to the protocol (e.g. `concurrency`, `routing` for queueing).
  """
  from fedqs_jax import program, schedule

  keys = program.seed_keys(list(range(seeds)), program.SCHEDULE_STREAM)
  kwargs = dict(protocol=protocol, num_rounds=num_rounds, buffer_size=k, **protocol_kwargs)
  if protocol == "tick":  # the capacity `schedule.build` uses (from the known latencies)
    kwargs["buffer_capacity"] = schedule.estimated_tick_capacity(
      np.asarray(time_model.latency), k, num_rounds
    )
  raw, first = timed(schedule._simulate_seeds, keys, time_model, **kwargs)
  sec = statistics.median(
    timed(schedule._simulate_seeds, keys, time_model, **kwargs)[1] for _ in range(3)
  )
  arrivals = seeds * num_rounds * k
  one = schedule.unbatch(raw, 0)
  out = {
    "protocol": protocol,
    "clients": time_model.num_clients,
    "k": k,
    "rounds": num_rounds,
    "seeds": seeds,
    "arrivals": arrivals,
    "seconds": sec,
    "arrivals_per_s": arrivals / sec,
    "compile_s": max(first - sec, 0.0),
    "overflow": bool(np.any(np.asarray(raw.overflow))),
    "simulated_updates_per_time": float(num_rounds * k / np.asarray(one.round_time)[-1]),
    "staleness_mean": float(np.asarray(one.staleness).mean()),
  }
  if protocol == "tick":
    ticks = seeds * (float(np.asarray(raw.round_time)[..., -1].max()) + 1)
    out["ticks_per_s"] = ticks / sec
  return out


def lane_slots(engine, lengths: np.ndarray) -> int:
  """Local-step slots `client_mode="lanes"` executes for tasks of `lengths` [G, rounds, K]:
  per round and device group, its lanes times the longest lane, from the engine's own plan
  (`fedqs_jax.engine.pack_lanes`)."""
  import jax
  import jax.numpy as jnp

  from fedqs_jax.engine import pack_lanes

  grid, rounds, k = lengths.shape
  groups = engine._device_groups(grid)
  per_group = lengths.reshape(groups, grid // groups, rounds, k).transpose(0, 2, 1, 3)
  tasks = per_group.reshape(groups, rounds, -1)
  lanes = engine.num_lanes(tasks.shape[-1])
  span = jax.jit(jax.vmap(jax.vmap(lambda x: pack_lanes(x, lanes)[3])))(jnp.asarray(tasks))
  return int(lanes * np.asarray(span).sum())

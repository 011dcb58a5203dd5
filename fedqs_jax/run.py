"""Running a comparison: several algorithms on one shared schedule, seeds batched.

`run(config, workdir)` validates the config (before compiling anything), loads
the data, builds ONE seed-vmapped schedule, then trains every algorithm on it,
chunk by chunk, and writes to `workdir`:

  config.json    the resolved config
  schedule.json  per-seed schedule summary (throughput, staleness, slots)
  metrics.csv    long form, one row per (algorithm, seed, evaluated round)
  summary.csv    one row per (algorithm, seed): final/best accuracy, time to target...
  accuracy.png   accuracy vs round and vs simulated time

All writes are atomic.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fedqs_jax import algorithms, io, memory, metrics, models, schedule, sweep
from fedqs_jax import config as config_lib
from fedqs_jax import data as data_lib
from fedqs_jax.engine import Engine, ExecConfig, LocalConfig

# Independent PRNG streams of a seed (fold_in of the seed's root key).
SCHEDULE_STREAM, INIT_STREAM, TRAIN_STREAM = 0, 1, 2


def seed_keys(seeds: list[int], stream: int) -> jax.Array:
  """[G] keys: `fold_in(PRNGKey(seed), stream)` for each seed."""
  return jnp.stack([jax.random.fold_in(jax.random.PRNGKey(s), stream) for s in seeds])


def make_schedule(config: ml_collections.ConfigDict) -> schedule.Schedule:
  """The run's schedule, one per seed ([G, ...])."""
  s = config.schedule
  return schedule.build(
    seed_keys(config_lib.seeds(config), SCHEDULE_STREAM),
    config_lib.time_model(config),
    protocol=s.protocol,
    num_rounds=s.num_rounds,
    buffer_size=s.buffer_size,
    clients_per_round=s.clients_per_round or None,
  )


def make_engine(
  config: ml_collections.ConfigDict, algorithm, apply_fn, data, num_slots: int
) -> Engine:
  loc, e = config.local, config.engine
  return Engine(
    algorithm,
    apply_fn,
    data,
    num_slots,
    local=LocalConfig(batch_size=loc.batch_size, epochs=loc.epochs, steps=loc.steps),
    execution=ExecConfig(
      client_mode=e.client_mode,
      round_mode=e.round_mode,
      local_loop=e.local_loop,
      local_unroll=e.local_unroll,
      rounds_per_chunk=e.eval_every,
    ),
  )


def base_hparams(config: ml_collections.ConfigDict, algo_hparams: dict) -> dict[str, float]:
  """The dynamic hyperparameters of one point: local training's and the algorithm's."""
  loc = config.local
  return {"lr": loc.lr, "momentum": loc.momentum, "clip": loc.clip, **algo_hparams}


def grid_hparams(
  config: ml_collections.ConfigDict, algo_hparams: dict, size: int, points=None
) -> dict:
  """The dynamic hyperparameters, each a [G] float32 array (`points`: one dict per entry)."""
  flat = base_hparams(config, algo_hparams)
  points = points or [{}] * size
  return {k: jnp.asarray([p.get(k, v) for p in points], jnp.float32) for k, v in flat.items()}


def algorithm_setup(config: ml_collections.ConfigDict, algorithm_name: str, num_classes: int):
  """(resolved config, model, algorithm, its base hyperparameters, its sweep points).

  The points are the sweep restricted to the hyperparameters this algorithm has.
  """
  algorithm_name, config = config_lib.resolve(algorithm_name, config)
  module = models.build(config.model, num_classes)
  algorithm, algo_hparams = algorithms.build(algorithm_name, config)
  hparams = base_hparams(config, algo_hparams)
  points = sweep.restrict(sweep.points(config), list(hparams))
  return config, module, algorithm, algo_hparams, points


def train(
  config: ml_collections.ConfigDict,
  algorithm_name: str,
  data: data_lib.FederatedData,
  sched: schedule.Schedule,
  on_chunk: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
  """Trains one algorithm on the seed-batched schedule `sched`.

  Returns per-seed arrays: `eval_round` [E], `test_accuracy` / `test_loss`
  [G, E], and the per-round algorithm and training metrics [G, T].
  """
  config, module, algorithm, algo_hparams, mine = algorithm_setup(
    config, algorithm_name, data.num_classes
  )

  def apply_fn(params, x):
    return module.apply({"params": params}, x)

  seeds = config_lib.seeds(config)
  # The grid: every swept point of this algorithm x every seed.
  grid = [(point, s) for point in mine for s in range(len(seeds))]
  # Several local devices: the grid axis is sharded over them, padded to a multiple of
  # their number with copies of the last entry (their results are dropped).
  devices = jax.local_devices()
  padded = grid + [grid[-1]] * (-len(grid) % len(devices))
  seed_index = np.array([s for _, s in padded])
  hparams = grid_hparams(config, algo_hparams, len(padded), [p for p, _ in padded])
  if len(padded) != len(seeds) or np.any(seed_index != np.arange(len(seeds))):
    sched = jax.tree.map(lambda x: x[seed_index], sched)  # each entry: its seed's schedule
  grid_seeds = [seeds[s] for s in seed_index]
  init_keys, train_keys = seed_keys(grid_seeds, INIT_STREAM), seed_keys(grid_seeds, TRAIN_STREAM)
  if len(devices) > 1:
    mesh = jax.sharding.Mesh(np.array(devices), ("grid",))
    by_point = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("grid"))
    sched, hparams, init_keys, train_keys = jax.device_put(
      (sched, hparams, init_keys, train_keys), by_point
    )
    data = jax.device_put(data, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  engine = make_engine(config, algorithm, apply_fn, data, sched.num_slots)
  sample = data.x_train[:1]
  params = jax.vmap(lambda k: module.init(k, sample)["params"])(init_keys)
  state = engine.init(
    train_keys,
    params,
    sched.init_client,
    sched.init_slot,
    sched.init_mask,
    hparams,
    data,
  )
  chunk = config.engine.eval_every
  num_chunks = sched.num_rounds // chunk
  events = sched.events()
  evals, round_metrics = [], []
  for c in range(num_chunks):
    state, per_round, evaluation = engine.run_chunk(state, events, hparams, data)
    evals.append(jax.device_get(evaluation))
    round_metrics.append(per_round)
    if on_chunk is not None:
      on_chunk(c + 1, num_chunks)
  out = {
    "eval_round": np.arange(1, num_chunks + 1) * chunk,
    "test_accuracy": np.stack([e["test_accuracy"] for e in evals], axis=1),
    "test_loss": np.stack([e["test_loss"] for e in evals], axis=1),
  }
  for key in round_metrics[0]:
    out[key] = np.concatenate([np.asarray(m[key]) for m in round_metrics], axis=1)
  out = {k: v if k == "eval_round" else v[: len(grid)] for k, v in out.items()}  # drop padding
  out["devices"] = len(state.round.sharding.device_set)
  out["chunk_traces"] = engine.traces
  out["grid"] = [(point, seeds[s], s) for point, s in grid]  # (point, seed, schedule index)
  return out


def window_metrics(result: dict, g: int, start: int, stop: int) -> dict[str, float]:
  """The per-round metrics of rounds [start, stop) of seed g, summarised for one CSV row.

  `dispatch_*` entries (sums over each round's dispatched clients) and step counts
  are summed over the window, and a `dispatch_<x>_sum` also gives
  `dispatch_<x>_mean` per dispatched client; other metrics are averaged.
  """
  out = {"train_loss": float(result["train_loss"][g, start:stop].mean())}
  dispatched = float(result["dispatched"][g, start:stop].sum())
  out["client_steps"] = int(result["client_steps"][g, start:stop].sum())
  out["dispatched"] = int(dispatched)
  for key, values in result.items():
    per_round = (
      isinstance(values, np.ndarray) and values.shape[1:2] == result["train_loss"].shape[1:2]
    )
    if key in out or not per_round or key in ("test_accuracy", "test_loss"):
      continue
    window = values[g, start:stop]
    if key == "diverged":
      out[key] = bool(window.any())
    elif key.startswith("dispatch_"):
      if key.endswith("_sum"):
        out[key[: -len("_sum")] + "_mean"] = float(window.sum()) / max(dispatched, 1.0)
      else:
        out[key] = float(window.sum())
    else:
      out[key] = float(window.mean())
  return out


def _rows(name, config, result, sched) -> tuple[list[dict], list[dict]]:
  """Long-form metrics rows and summary rows of one algorithm (one per grid entry)."""
  eval_round = result["eval_round"]
  staleness = np.asarray(sched.staleness)  # [seeds, T, K]
  round_time = np.asarray(sched.round_time)  # [seeds, T]
  swept = list(dict.fromkeys(k for p in sweep.points(config) for k in p))
  metric_rows, summary_rows = [], []
  for g, (point, seed, s) in enumerate(result["grid"]):
    prev = 0
    times = round_time[s, eval_round - 1]
    columns = {"sweep": sweep.label(point), **{k: point.get(k, "") for k in swept}}
    for e, r in enumerate(eval_round):
      window = staleness[s, prev:r]
      metric_rows.append(
        {
          "algorithm": name,
          **columns,
          "seed": seed,
          "round": int(r),
          "time": float(times[e]),
          "test_accuracy": float(result["test_accuracy"][g, e]),
          "test_loss": float(result["test_loss"][g, e]),
          "staleness_mean": float(window.mean()),
          "staleness_max": int(window.max()),
          **window_metrics(result, g, prev, r),
        }
      )
      prev = r
    stats = metrics.summarize(eval_round, times, result["test_accuracy"][g], config.target_accuracy)
    hit = np.flatnonzero(result["diverged"][g])
    stats["diverged_round"] = int(hit[0]) + 1 if hit.size else ""
    summary_rows.append({"algorithm": name, **columns, "seed": seed, **stats})
  return metric_rows, summary_rows


def curve_label(row: dict) -> str:
  """What a row's curve is called: its algorithm, and its sweep point if any."""
  return row["algorithm"] + (f"[{row['sweep']}]" if row.get("sweep") else "")


def results_table(summary_rows: list[dict], target: float) -> str:
  """The per-algorithm (and per-point) table, mean +- std over seeds, printed at the end."""
  width = max([12] + [len(curve_label(r)) for r in summary_rows])
  header = (
    f"{'algorithm':<{width}} {'final acc':>16} {'best acc':>9} "
    f"{f'rounds to {target:.0%}':>16} {f'time to {target:.0%}':>16} {'oscillation':>11}"
  )
  lines = [header, "-" * len(header)]
  names = list(dict.fromkeys(curve_label(r) for r in summary_rows))
  for name in names:
    rows = [r for r in summary_rows if curve_label(r) == name]
    final = np.array([r["final_accuracy"] for r in rows])
    oscillation = np.mean([r["oscillation_std"] for r in rows])
    best = np.array([r["best_accuracy"] for r in rows])

    def reached(key, rows=rows):
      vals = np.array([r[key] for r in rows])
      ok = vals[np.isfinite(vals)]
      return f"{ok.mean():.0f} ({len(ok)}/{len(vals)})" if ok.size else "never"

    lines.append(
      f"{name:<{width}} {100 * final.mean():>8.2f} +- {100 * final.std():>4.2f} "
      f"{100 * best.mean():>9.2f} {reached('rounds_to_target'):>16} "
      f"{reached('time_to_target'):>16} {100 * oscillation:>11.2f}"
    )
  return "\n".join(lines)


def memory_estimate(config, algorithm_name, data, sched) -> dict[str, int]:
  """`memory.estimate` of one algorithm's grid on this run's schedule."""
  config, module, algorithm, algo_hparams, points = algorithm_setup(
    config, algorithm_name, data.num_classes
  )
  params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), data.x_train[:1])["params"])
  return memory.estimate(
    algorithm,
    params,
    data,
    num_slots=sched.num_slots,
    train_width=max(sched.init_client.shape[-1], sched.dispatch_client.shape[-1]),
    grid_size=len(points) * config.num_seeds,
    hparams=base_hparams(config, algo_hparams),
  )


def check_memory(config, algorithm_name, data, sched) -> None:
  """Raises `ConfigError` if the algorithm's grid does not fit the device (see `memory`)."""
  estimate = memory_estimate(config, algorithm_name, data, sched)
  limit_gb = config.engine.get("memory_limit_gb", 0.0)
  limit = int(limit_gb * 2**30) if limit_gb > 0 else memory.available_bytes()
  memory.check_fits(estimate, limit)


class Progress:
  """One progress line per chunk (at most every `every` seconds) with the job's ETA.

  The first chunk of each algorithm includes its compile, so the ETA adds the mean
  first-chunk time for each algorithm not started yet to the steady time per round
  (later chunks) for the remaining rounds.
  """

  def __init__(self, num_algorithms: int, rounds: int, stream=sys.stdout, every: float = 2.0):
    self.num_algorithms, self.rounds, self.stream, self.every = (
      num_algorithms,
      rounds,
      stream,
      every,
    )
    self.total = num_algorithms * rounds
    self.done, self.started = 0, 0
    self.first_chunks: list[float] = []  # seconds of each algorithm's first chunk
    self.steady_seconds, self.steady_rounds = 0.0, 0
    self.start = self.last = self.previous = time.perf_counter()

  def eta(self, chunk_rounds: int) -> float | None:
    """Seconds left; None until a chunk after a first one has been timed."""
    if not self.steady_rounds:
      return None if self.done < self.total else 0.0
    per_round = self.steady_seconds / self.steady_rounds
    unstarted = self.num_algorithms - self.started
    compile_estimate = sum(self.first_chunks) / len(self.first_chunks) - per_round * chunk_rounds
    return (self.total - self.done) * per_round + unstarted * max(compile_estimate, 0.0)

  def update(self, label: str, rounds: int, chunk: int, num_chunks: int) -> None:
    now = time.perf_counter()
    if chunk == 1:
      self.started += 1
      self.first_chunks.append(now - self.previous)
    else:
      self.steady_seconds += now - self.previous
      self.steady_rounds += rounds
    self.previous = now
    self.done += rounds
    if chunk < num_chunks and now - self.last < self.every:
      return
    self.last = now
    eta = self.eta(rounds)
    print(
      f"[{label}] chunk {chunk}/{num_chunks} | {self.done}/{self.total} rounds | "
      f"{now - self.start:5.0f}s elapsed | ETA " + ("    ?" if eta is None else f"{eta:5.0f}s"),
      file=self.stream,
      flush=True,
    )


def run(config: ml_collections.ConfigDict, workdir: str, stream=sys.stdout) -> dict[str, Any]:
  """Validates, runs every algorithm of `config` on one schedule, writes `workdir`."""
  config_lib.validate(config, workdir)
  names = config_lib.algorithm_names(config)
  data = data_lib.load(config.data, config.data.seed)
  sched = make_schedule(config)
  for name in names:  # before anything is written or compiled for training
    check_memory(config, name, data, sched)
  os.makedirs(workdir, exist_ok=True)
  io.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  seeds = config_lib.seeds(config)
  summaries = {s: schedule.summary(schedule.unbatch(sched, g)) for g, s in enumerate(seeds)}
  io.write_json(os.path.join(workdir, "schedule.json"), summaries)
  first = summaries[seeds[0]]
  print(
    f"schedule: {config.schedule.protocol}, N={data.num_clients}, T={sched.num_rounds}, "
    f"K={sched.buffer_size}, slots={sched.num_slots}, simulated time "
    f"{first['simulated_time']:.1f}, staleness mean {first['staleness_mean']:.2f} "
    f"max {first['staleness_max']}",
    file=stream,
    flush=True,
  )

  progress = Progress(len(names), sched.num_rounds, stream)
  metric_rows, summary_rows, results = [], [], {}
  chunk = config.engine.eval_every
  for name in names:
    result = train(
      config,
      name,
      data,
      sched,
      on_chunk=lambda c, n, name=name: progress.update(name, chunk, c, n),
    )
    m, s = _rows(name, config, result, sched)
    metric_rows += m
    summary_rows += s
    results[name] = result
  io.write_csv(os.path.join(workdir, "metrics.csv"), metric_rows)
  io.write_csv(os.path.join(workdir, "summary.csv"), summary_rows)

  from fedqs_jax import plotting  # matplotlib only when writing plots

  plotting.accuracy_curves(metric_rows, os.path.join(workdir, "accuracy.png"), curve_label)
  print(results_table(summary_rows, config.target_accuracy), file=stream, flush=True)
  return {"results": results, "summary": summary_rows, "metrics": metric_rows, "schedule": sched}

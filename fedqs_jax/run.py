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

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fedqs_jax import (
  algorithms,
  checkpoint,
  distributed,
  io,
  memory,
  metrics,
  models,
  schedule,
  sweep,
)
from fedqs_jax import config as config_lib
from fedqs_jax import data as data_lib
from fedqs_jax.engine import Engine, ExecConfig, LocalConfig
from fedqs_jax.errors import check

# Independent PRNG streams of a seed (fold_in of the seed's root key).
SCHEDULE_STREAM, INIT_STREAM, TRAIN_STREAM = 0, 1, 2
CHECKPOINTS = "checkpoints"  # the workdir's folder of per-algorithm checkpoints


def seed_keys(seeds: list[int], stream: int) -> jax.Array:
  """[G] keys: `fold_in(PRNGKey(seed), stream)` for each seed."""
  return jnp.stack([jax.random.fold_in(jax.random.PRNGKey(s), stream) for s in seeds])


def make_schedule(config: ml_collections.ConfigDict) -> schedule.Schedule:
  """The run's schedule, one per seed ([G, ...])."""
  s = config.schedule
  queueing = {}
  if s.protocol == "queueing":
    routing, concurrency = schedule.queueing_parameters(
      s.get("routing"), s.get("concurrency", 0), config.data.num_clients
    )
    queueing = dict(routing=routing, concurrency=concurrency)
  return schedule.build(
    seed_keys(config_lib.seeds(config), SCHEDULE_STREAM),
    config_lib.time_model(config),
    protocol=s.protocol,
    num_rounds=s.num_rounds,
    buffer_size=s.buffer_size,
    clients_per_round=s.clients_per_round or None,
    **queueing,
  )


class ModelFns(NamedTuple):
  """A model as pure functions of the pytree the engine trains and algorithms average.

  That pytree is the 'params' collection, or for models with state that training
  updates (BatchNorm) the dict of 'params' and those collections.
  """

  init: Callable  # (key, x) -> params pytree
  apply: Callable  # (params, x) -> logits, evaluation mode
  train: Callable  # (params, x, key) -> (logits, updated collections), training mode


def model_fns(module, stateful: tuple[str, ...] = (), dropout: bool = False) -> ModelFns:
  """`module`'s functions; `stateful`: its collections that training updates
  (`models.stateful_collections`), `dropout`: whether it draws a 'dropout' rng."""

  def variables(p):
    return p if stateful else {"params": p}

  def init(key, x):
    v = module.init(key, x)
    return {k: v[k] for k in ("params", *stateful)} if stateful else v["params"]

  def apply(p, x):
    return module.apply(variables(p), x)

  def train(p, x, key):
    rngs = {"dropout": key} if dropout else None
    if stateful:
      logits, state = module.apply(variables(p), x, train=True, rngs=rngs, mutable=list(stateful))
      return logits, dict(state)
    return module.apply(variables(p), x, train=True, rngs=rngs), {}

  return ModelFns(init, apply, train)


def make_engine(
  config: ml_collections.ConfigDict, algorithm, model: ModelFns | Callable, data, num_slots: int
) -> Engine:
  """The engine of `config`'s local training and execution modes (`model`: the model's
  functions, or just its `apply(params, x)` for a model without dropout or state)."""
  loc, e = config.local, config.engine
  if not isinstance(model, ModelFns):
    model = ModelFns(init=None, apply=model, train=None)
  return Engine(
    algorithm,
    model.apply,
    data,
    num_slots,
    train_fn=model.train,
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
  checkpoint_dir: str | None = None,
  resume: bool = False,
) -> dict[str, np.ndarray]:
  """Trains one algorithm on the seed-batched schedule `sched`.

  The grid (every swept point x every seed) is one program whose leading axis is
  sharded over all devices, of every process under `jax.distributed`. With
  `checkpoint_dir`, the grid's state and metrics are saved every
  `config.engine.checkpoint_every` chunks; `resume` continues from the newest
  checkpoint there and gives exactly the numbers of an uninterrupted run.

  Returns per-seed arrays: `eval_round` [E], `test_accuracy` / `test_loss`
  [G, E], and the per-round algorithm and training metrics [G, T].
  """
  config, module, algorithm, algo_hparams, mine = algorithm_setup(
    config, algorithm_name, data.num_classes
  )

  model = model_fns(
    module, models.stateful_collections(config.model), models.uses_dropout(config.model)
  )
  seeds = config_lib.seeds(config)
  # The grid: every swept point of this algorithm x every seed.
  grid = [(point, s) for point in mine for s in range(len(seeds))]
  # Several devices: the grid axis is sharded over them, padded to a multiple of
  # their number with copies of the last entry (their results are dropped).
  devices = jax.devices()
  padded = grid + [grid[-1]] * (-len(grid) % len(devices))
  seed_index = np.array([s for _, s in padded])
  hparams = grid_hparams(config, algo_hparams, len(padded), [p for p, _ in padded])
  if len(padded) != len(seeds) or np.any(seed_index != np.arange(len(seeds))):
    sched = jax.tree.map(lambda x: x[seed_index], sched)  # each entry: its seed's schedule
  grid_seeds = [seeds[s] for s in seed_index]
  init_keys, train_keys = seed_keys(grid_seeds, INIT_STREAM), seed_keys(grid_seeds, TRAIN_STREAM)
  num_slots = sched.num_slots  # read on the host, before the schedule spans other processes
  if len(devices) > 1:
    mesh = jax.sharding.Mesh(np.array(devices), ("grid",))
    by_point = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("grid"))
    local = jax.device_get((sched, hparams, init_keys, train_keys))  # the same in every process
    sched, hparams, init_keys, train_keys = jax.device_put(local, by_point)
    data = jax.device_put(
      jax.device_get(data), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    )
  engine = make_engine(config, algorithm, model, data, num_slots)
  sample = data.x_train[:1]
  params = jax.vmap(lambda k: model.init(k, sample))(init_keys)
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
  done, history = 0, {}  # history: host arrays [G, chunks or rounds] of the chunks done
  checkpoints = None
  if checkpoint_dir is not None:
    checkpoints = checkpoint.Checkpoints(checkpoint_dir, config.engine.checkpoint_every)
    if resume and checkpoints.latest() is not None:
      done, state, history = checkpoints.restore(state)
  for c in range(done, num_chunks):
    state, per_round, evaluation = engine.run_chunk(state, events, hparams, data)
    new = distributed.to_host({**evaluation, **per_round})
    for key, value in new.items():
      value = value[:, None] if value.ndim == 1 else value  # an evaluation: [G] -> [G, 1]
      history[key] = np.concatenate([history[key], value], axis=1) if key in history else value
    if checkpoints is not None and checkpoints.due(c + 1, num_chunks):
      checkpoints.save(c + 1, state, history)
    if on_chunk is not None:
      on_chunk(c + 1, num_chunks)
  if checkpoints is not None:
    checkpoints.close()
  out = {k: v[: len(grid)] for k, v in history.items()}  # drop the padding
  out["eval_round"] = np.arange(1, num_chunks + 1) * chunk
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


def _rows(name, config, result, sched, static=None) -> tuple[list[dict], list[dict]]:
  """Long-form metrics rows and summary rows of one algorithm (one per grid entry);
  `static`: the group's static sweep values, a column each and part of the label."""
  static = static or {}
  eval_round = result["eval_round"]
  staleness = np.asarray(sched.staleness)  # [seeds, T, K]
  round_time = np.asarray(sched.round_time)  # [seeds, T]
  swept = list(dict.fromkeys(k for p in sweep.points(config) for k in p))
  metric_rows, summary_rows = [], []
  for g, (point, seed, s) in enumerate(result["grid"]):
    prev = 0
    times = round_time[s, eval_round - 1]
    columns = {
      "sweep": sweep.label({**static, **point}),
      **static,
      **{k: point.get(k, "") for k in swept},
    }
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
  stateful = models.stateful_collections(config.model)
  model = model_fns(module, stateful, models.uses_dropout(config.model))
  sample = data.x_train[:1]
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), sample))
  batch = jax.ShapeDtypeStruct((config.local.batch_size, *sample.shape[1:]), sample.dtype)

  def intermediates(p, x):  # every submodule's output on one minibatch
    v = p if stateful else {"params": p}
    return module.apply(v, x, capture_intermediates=True, mutable=["intermediates"])[1]

  activations = memory.tree_bytes(batch) + 2 * memory.tree_bytes(
    jax.eval_shape(intermediates, params, batch)
  )
  return memory.estimate(
    algorithm,
    params,
    data,
    num_slots=sched.num_slots,
    train_width=max(sched.init_client.shape[-1], sched.dispatch_client.shape[-1]),
    grid_size=len(points) * config.num_seeds,
    hparams=base_hparams(config, algo_hparams),
    num_devices=jax.device_count(),
    activation_bytes=activations,
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

  def __init__(
    self, num_algorithms: int, rounds: int | list[int], stream=sys.stdout, every: float = 2.0
  ):
    """`rounds`: of every algorithm, or a list with the rounds of each run."""
    self.num_algorithms, self.stream, self.every = num_algorithms, stream, every
    self.total = sum(rounds) if isinstance(rounds, list) else num_algorithms * rounds
    self.done, self.started = 0, 0
    self.labels: set[str] = set()  # algorithms seen so far
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
    if label not in self.labels:  # its first chunk in this process, compile included
      self.labels.add(label)
      self.started += 1
      self.first_chunks.append(now - self.previous)
      self.done += (chunk - 1) * rounds  # chunks restored from a checkpoint
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


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
  """The dotted names of the fields where two JSON-like configs differ."""
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for key in sorted(set(a) | set(b)):
      out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
    return out
  return [] if a == b else [prefix[:-1]]


def _check_resumable(config: ml_collections.ConfigDict, workdir: str, resume: bool) -> None:
  """A checkpointed run continues only with `resume` and only with its own config."""
  folder = os.path.join(workdir, CHECKPOINTS)
  saved = os.path.join(workdir, "config.json")
  if not resume:
    check(not os.path.isdir(folder) or not os.listdir(folder), "workdir", workdir,
          f"holds checkpoints of an unfinished run ({folder}): pass --resume to continue "
          "it, or use another workdir")  # fmt: skip
    return
  if os.path.exists(saved):
    with open(saved) as f:
      before = json.load(f)
    now = json.loads(json.dumps(config.to_dict(), default=io.jsonable))
    changed = _differences(before, now)
    check(not changed, "--resume", ", ".join(changed[:5]),
          f"the config differs from the one of the run in {workdir} in these fields; "
          "resume with the same config (or start a new workdir)")  # fmt: skip


def run(
  config: ml_collections.ConfigDict, workdir: str, stream=sys.stdout, resume: bool = False
) -> dict[str, Any]:
  """Validates, runs every algorithm of `config` on one schedule, writes `workdir`.

  A sweep over static config fields (`sweep.groups`) runs group by group, each with
  its own data and schedule; every group is validated and its memory checked before
  anything is written or compiled. With `config.engine.checkpoint_every` > 0 each
  algorithm's grid is checkpointed in `workdir/checkpoints/`; `resume` continues a
  killed run from there (the checkpoints are removed once the results are written).
  Under `jax.distributed` every process runs this, and process 0 alone writes.
  """
  config_lib.validate(config, workdir)
  _check_resumable(config, workdir, resume)
  names = config_lib.algorithm_names(config)
  groups = []
  for static, group_config in sweep.groups(config):
    config_lib.validate(group_config)
    data = data_lib.load(group_config.data, group_config.data.seed)
    sched = make_schedule(group_config)
    for name in names:  # before anything is written or compiled for training
      check_memory(group_config, name, data, sched)
    groups.append((static, group_config, data, sched))
  writer = distributed.is_writer()
  if not writer:
    stream = open(os.devnull, "w")  # only process 0 reports
  seeds = config_lib.seeds(config)
  summaries = {
    sweep.label(static): {
      s: schedule.summary(schedule.unbatch(sched, g)) for g, s in enumerate(seeds)
    }
    for static, _, _, sched in groups
  }
  if writer:
    os.makedirs(workdir, exist_ok=True)
    io.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    io.write_json(
      os.path.join(workdir, "schedule.json"), summaries[""] if len(groups) == 1 else summaries
    )
  progress = Progress(len(names) * len(groups), [g[3].num_rounds for g in groups for _ in names],
                      stream)  # fmt: skip
  metric_rows, summary_rows, results = [], [], {}
  checkpointing = config.engine.get("checkpoint_every", 0) > 0
  for static, group_config, data, sched in groups:
    tag = sweep.label(static)
    first = summaries[tag][seeds[0]]
    print(
      (f"[{tag}] " if tag else "")
      + f"schedule: {group_config.schedule.protocol}, N={data.num_clients}, "
      f"T={sched.num_rounds}, K={sched.buffer_size}, slots={sched.num_slots}, simulated time "
      f"{first['simulated_time']:.1f}, staleness mean {first['staleness_mean']:.2f} "
      f"max {first['staleness_max']}",
      file=stream,
      flush=True,
    )
    chunk = group_config.engine.eval_every
    for name in names:
      label = f"{name}[{tag}]" if tag else name
      folder = os.path.join(workdir, CHECKPOINTS, *([tag] if tag else []), name)
      result = train(
        group_config,
        name,
        data,
        sched,
        on_chunk=lambda c, n, label=label, chunk=chunk: progress.update(label, chunk, c, n),
        checkpoint_dir=folder if checkpointing else None,
        resume=resume,
      )
      m, s = _rows(name, group_config, result, sched, static)
      metric_rows += m
      summary_rows += s
      results[label] = result
  if writer:
    io.write_csv(os.path.join(workdir, "metrics.csv"), metric_rows)
    io.write_csv(os.path.join(workdir, "summary.csv"), summary_rows)

    from fedqs_jax import plotting  # matplotlib only when writing plots

    plotting.accuracy_curves(metric_rows, os.path.join(workdir, "accuracy.png"), curve_label)
    shutil.rmtree(os.path.join(workdir, CHECKPOINTS), ignore_errors=True)
  print(results_table(summary_rows, config.target_accuracy), file=stream, flush=True)
  schedules = {sweep.label(g[0]): g[3] for g in groups}
  return {
    "results": results,
    "summary": summary_rows,
    "metrics": metric_rows,
    "schedule": schedules[""] if len(groups) == 1 else schedules,
  }

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
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from fedqs_jax import checkpoint, distributed, io, program, report, schedule, sweep
from fedqs_jax import config as config_lib
from fedqs_jax import data as data_lib
from fedqs_jax.errors import check

CHECKPOINTS = "checkpoints"  # the workdir's folder of per-algorithm checkpoints


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
  num_slots = sched.num_slots  # read on the host, before the schedule spans other processes
  prog = program.build_program(config, algorithm_name, data, num_slots)
  config, mine = prog.config, prog.points
  seeds = config_lib.seeds(config)
  # The grid: every swept point of this algorithm x every seed.
  grid = [(point, s) for point in mine for s in range(len(seeds))]
  # Several devices: the grid axis is sharded over them, padded to a multiple of
  # their number with copies of the last entry (their results are dropped).
  devices = jax.devices()
  padded = grid + [grid[-1]] * (-len(grid) % len(devices))
  seed_index = np.array([s for _, s in padded])
  hparams = prog.grid_hparams([p for p, _ in padded])
  if len(padded) != len(seeds) or np.any(seed_index != np.arange(len(seeds))):
    sched = jax.tree.map(lambda x: x[seed_index], sched)  # each entry: its seed's schedule
  grid_seeds = [seeds[s] for s in seed_index]
  init_keys = program.seed_keys(grid_seeds, program.INIT_STREAM)
  train_keys = program.seed_keys(grid_seeds, program.TRAIN_STREAM)
  if len(devices) > 1:
    mesh = jax.sharding.Mesh(np.array(devices), ("grid",))
    by_point = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("grid"))
    local = jax.device_get((sched, hparams, init_keys, train_keys))  # the same in every process
    sched, hparams, init_keys, train_keys = jax.device_put(local, by_point)
    data = jax.device_put(
      jax.device_get(data), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    )
  engine = prog.engine
  sample = data.x_train[:1]
  params = jax.vmap(lambda k: prog.model.init(k, sample))(init_keys)
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
    sched = program.make_schedule(group_config)
    for name in names:  # before anything is written or compiled for training
      prog = program.build_program(group_config, name, data, sched.num_slots)
      program.check_memory(prog, data, sched)
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
  rounds = [g[3].num_rounds for g in groups for _ in names]
  progress = report.Progress(len(names) * len(groups), rounds, stream)
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
      m, s = report.rows(name, group_config, result, sched, static)
      metric_rows += m
      summary_rows += s
      results[label] = result
  if writer:
    io.write_csv(os.path.join(workdir, "metrics.csv"), metric_rows)
    io.write_csv(os.path.join(workdir, "summary.csv"), summary_rows)

    from fedqs_jax import plotting  # matplotlib only when writing plots

    plotting.accuracy_curves(metric_rows, os.path.join(workdir, "accuracy.png"), report.curve_label)
    shutil.rmtree(os.path.join(workdir, CHECKPOINTS), ignore_errors=True)
  print(report.results_table(summary_rows, config.target_accuracy), file=stream, flush=True)
  schedules = {sweep.label(g[0]): g[3] for g in groups}
  return {
    "results": results,
    "summary": summary_rows,
    "metrics": metric_rows,
    "schedule": schedules[""] if len(groups) == 1 else schedules,
  }

"""Running a comparison: several algorithms on one shared schedule, seeds batched.

`run(config, workdir)` validates the config (before compiling anything), loads
the data, builds ONE seed-vmapped schedule, then trains every algorithm on it,
chunk by chunk, and writes to `workdir`:

  config.json    the resolved config
  schedule.json  per-seed schedule summary (throughput, staleness, slots)
  metrics.csv    long form, one row per (algorithm, seed, evaluated round)
  summary.csv    one row per (algorithm, seed): final/best accuracy, time to target...
  accuracy.png   accuracy vs round and vs simulated time
  report.md      the run on one page: its command line, config hash, schedule summary
                 per seed, the results table as printed on the console, the plots
  manifest.json  written last: the config's hash and each file's sha256

A workdir belongs to one run: the run holds an exclusive lock on `workdir/.lock`
(its pid inside; the OS drops it when the process dies), and a workdir that holds
another run's files is refused unless `overwrite` (start over) or `resume`
(continue it). Each file is written atomically, and the set is consistent through
the manifest: it is removed before a new set is written and written after it, so
readers (`experiments.plot`) refuse a set that a killed run left half-written.
"""

from __future__ import annotations

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
from fedqs_jax import workdir as workdir_lib
from fedqs_jax.errors import check


def fingerprint(prog: program.Program) -> checkpoint.Fingerprint:
  """What a checkpoint of `prog`'s grid belongs to: its resolved config's hash, the
  algorithm (or variant) and the grid, every (point, seed) in order."""
  return {
    "config_hash": workdir_lib.config_hash(prog.config),
    "algorithm": prog.name,
    "grid": [[sweep.label(p), s] for p in prog.points for s in config_lib.seeds(prog.config)],
  }


def train(
  config: ml_collections.ConfigDict,
  algorithm_name: str,
  data: data_lib.FederatedData,
  sched: schedule.Schedule,
  on_chunk: Callable[[int, int], None] | None = None,
  checkpoint_dir: str | None = None,
  resume: bool = False,
  on_restore: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
  """Trains one algorithm on the seed-batched schedule `sched`.

  The grid (every swept point x every seed) is one program whose leading axis is
  sharded over all devices, of every process under `jax.distributed`. With
  `checkpoint_dir`, the grid's state and metrics are saved every
  `config.engine.checkpoint_every` chunks, stamped with the program's `fingerprint`;
  `resume` continues from the newest checkpoint there (`on_restore(chunks done,
  chunks)` is told) and gives exactly the numbers of an uninterrupted run, or raises
  `ConfigError` if the checkpoint's fingerprint is not this program's.

  Returns per-seed arrays: `eval_round` [E], `test_accuracy` / `test_loss`
  [G, E], and the per-round algorithm and training metrics [G, T].
  """
  num_slots = sched.num_slots  # read on the host, before the schedule spans other processes
  prog = program.build_program(config, algorithm_name, data, num_slots)
  stamp = fingerprint(prog)
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
    checkpoints = checkpoint.Checkpoints(checkpoint_dir, config.engine.checkpoint_every, stamp)
    if resume and checkpoints.latest() is not None:
      done, state, history = checkpoints.restore(state)
      if on_restore is not None:
        on_restore(done, num_chunks)
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


def run(
  config: ml_collections.ConfigDict,
  workdir: str,
  stream=sys.stdout,
  resume: bool = False,
  overwrite: bool = False,
  command: str | None = None,
) -> dict[str, Any]:
  """Validates, runs every algorithm of `config` on one schedule, writes `workdir`.

  A sweep over static config fields (`sweep.groups`) runs group by group, each with
  its own data and schedule; every group is validated and its memory checked before
  anything is written or compiled. The run holds `workdir`'s lock throughout; a
  workdir locked by another run, or holding another run's files, is refused
  (`ConfigError`) unless `overwrite` (its files and checkpoints are replaced) or
  `resume`. With `config.engine.checkpoint_every` > 0 each algorithm's grid is
  checkpointed in `workdir/checkpoints/`; `resume` continues a killed run from there
  (the checkpoints are removed once the results are written), refusing checkpoints
  of another config. Under `jax.distributed` every process runs this, and process 0
  alone locks and writes. `command` is the command line report.md shows (default: this
  process's, shell-quoted); a resumed run's report.md is rewritten with its own.
  """
  command = report.command_line() if command is None else command
  # Every static group's config is valid (a swept field's unswept value need not be),
  # and so is the workdir.
  sweep.check_groups(config)
  config_lib.validate(sweep.groups(config)[0][1], workdir)
  check(not (resume and overwrite), "--overwrite", True,
        "--resume continues the run in the workdir, --overwrite starts over: not both")  # fmt: skip
  # A workdir that exists is claimed at once (a busy or used one fails fast); a new one
  # once everything is validated, so that bad input creates nothing.
  early = jax.process_count() == 1 and os.path.isdir(workdir)
  lock = workdir_lib.claim(config, workdir, resume, overwrite) if early else None
  try:
    groups, stamps, estimates = _prepare(config, workdir)
    if distributed.is_writer() and sweep.points(config) != [{}]:
      print(sweep.describe_memory(estimates), file=stream, flush=True)
    if not early:
      lock = workdir_lib.claim(config, workdir, resume, overwrite)
    return _train_and_write(config, workdir, stream, resume, groups, stamps, command)
  finally:
    if lock is not None:
      lock.release()


def _prepare(config: ml_collections.ConfigDict, workdir: str) -> tuple[list, dict, list]:
  """Every group validated, its data loaded, its schedule built and its programs'
  memory checked; each algorithm's checkpoint folder with its fingerprint, and each
  program's (static group, algorithm, memory estimate)."""
  groups, stamps, estimates = [], {}, []
  for static, group_config in sweep.groups(config):
    config_lib.validate(group_config)
    data = data_lib.load(group_config.data, group_config.data.seed)
    sched = program.make_schedule(group_config)
    for name in config_lib.algorithm_names(config):
      prog = program.build_program(group_config, name, data, sched.num_slots)
      estimates.append((static, name, program.check_memory(prog, data, sched)))
      stamps[_checkpoint_dir(workdir, sweep.label(static), name)] = fingerprint(prog)
    groups.append((static, group_config, data, sched))
  return groups, stamps, estimates


def _checkpoint_dir(workdir: str, tag: str, name: str) -> str:
  return os.path.join(workdir, workdir_lib.CHECKPOINTS, *([tag] if tag else []), name)


def _train_and_write(config, workdir, stream, resume, groups, stamps, command) -> dict[str, Any]:
  """Trains every group and algorithm, writes the result set (`run`'s second half)."""
  names = config_lib.algorithm_names(config)
  checkpointing = config.engine.get("checkpoint_every", 0) > 0
  if resume and checkpointing:  # every checkpoint is this run's, before anything trains
    for folder, stamp in stamps.items():
      if os.path.isdir(folder):
        found = checkpoint.Checkpoints(folder, 0, stamp)
        try:
          found.verify()
        finally:
          found.close()
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
    io.remove_manifest(workdir)  # the old result set is no longer whole
    io.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    io.write_json(
      os.path.join(workdir, "schedule.json"), summaries[""] if len(groups) == 1 else summaries
    )
  warned = {}  # each warning once, in order (the console's, and report.md's)
  for static, _, data, _ in groups:
    empty = int(np.sum(np.asarray(data.client_count) == 0))
    warning = (
      f"warning: {empty} of {data.num_clients} clients hold no training examples: their "
      "tasks train nothing (a round that dispatches only them has train_loss NaN)"
    )
    if empty and warning not in warned:
      warned[warning] = None
      tag = sweep.label(static)
      print((f"[{tag}] " if tag else "") + warning, file=stream, flush=True)
  rounds = [g[3].num_rounds for g in groups for _ in names]
  progress = report.Progress(len(names) * len(groups), rounds, stream)
  metric_rows, summary_rows, results = [], [], {}
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
      result = train(
        group_config,
        name,
        data,
        sched,
        on_chunk=lambda c, n, label=label, chunk=chunk: progress.update(label, chunk, c, n),
        checkpoint_dir=_checkpoint_dir(workdir, tag, name) if checkpointing else None,
        resume=resume,
        on_restore=lambda c, n, label=label, chunk=chunk: progress.restored(label, chunk, c, n),
      )
      m, s = report.rows(name, group_config, result, sched, static)
      metric_rows += m
      summary_rows += s
      results[label] = result
  table = report.results_table(summary_rows, config.target_accuracy)  # console and report.md
  if writer:
    io.write_csv(os.path.join(workdir, "metrics.csv"), metric_rows)
    io.write_csv(os.path.join(workdir, "summary.csv"), summary_rows)

    from fedqs_jax import plotting  # matplotlib only when writing plots

    plotting.accuracy_curves(
      metric_rows,
      os.path.join(workdir, "accuracy.png"),
      report.curve_label,
      report.diverged_rounds(summary_rows),
    )
    io.write_text(
      os.path.join(workdir, "report.md"),
      report.markdown(
        f"Run {os.path.basename(os.path.normpath(os.path.abspath(workdir)))}",
        command,
        workdir_lib.config_hash(config),
        names,
        seeds,
        config.target_accuracy,
        summaries,
        table,
        [n for n in workdir_lib.RESULTS if n.endswith(".png")],
        list(warned),
        resume,
      ),
    )
    io.write_manifest(
      workdir, workdir_lib.RESULTS, workdir_lib.config_hash(config)
    )  # last: the set is whole
    shutil.rmtree(os.path.join(workdir, workdir_lib.CHECKPOINTS), ignore_errors=True)
  print(table, file=stream, flush=True)
  schedules = {sweep.label(g[0]): g[3] for g in groups}
  return {
    "results": results,
    "summary": summary_rows,
    "metrics": metric_rows,
    "schedule": schedules[""] if len(groups) == 1 else schedules,
  }

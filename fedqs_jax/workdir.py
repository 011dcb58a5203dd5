"""A run's workdir: one run at a time, its result set whole or refused.

`claim` makes a workdir a run's own: process 0 creates it and holds an exclusive lock on
it for the run's life (`LOCK`, released by the OS however the process ends; a second run
is refused naming the holder's pid), refuses a folder with an earlier run's results
unless `--overwrite` or `--resume` (`check_resumable`), and removes a killed run's
temporary files. The result set is `RESULTS` plus `io.MANIFEST`, written last.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from fedqs_jax import distributed, io
from fedqs_jax.errors import ConfigError, check

CHECKPOINTS = "checkpoints"  # the workdir's folder of per-algorithm checkpoints
LOCK = ".lock"  # the workdir's lock file (holds the running process's pid)
RESULTS = (
  "config.json", "schedule.json", "metrics.csv", "summary.csv", "accuracy.png", "report.md"
)  # fmt: skip


def config_hash(config: ml_collections.ConfigDict) -> str:
  """The sha256 of the resolved config (canonical JSON): what a result set came from."""
  return io.digest(config.to_dict())


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
  """The dotted names of the fields where two JSON-like configs differ."""
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for key in sorted(set(a) | set(b)):
      out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
    return out
  return [] if a == b else [prefix[:-1]]


def check_resumable(
  config: ml_collections.ConfigDict, workdir: str, resume: bool, overwrite: bool = False
) -> None:
  """A workdir with another run's files is refused unless `overwrite`; one with
  checkpoints continues only with `resume` and only with its own config."""
  if overwrite:
    return
  folder = os.path.join(workdir, CHECKPOINTS)
  saved = os.path.join(workdir, "config.json")
  if not resume:
    check(not os.path.isdir(folder) or not os.listdir(folder), "workdir", workdir,
          f"holds checkpoints of an unfinished run ({folder}): pass --resume to continue "
          "it, --overwrite to start over, or use another workdir")  # fmt: skip
    present = [n for n in (*RESULTS, io.MANIFEST) if os.path.lexists(os.path.join(workdir, n))]
    check(not present, "workdir", workdir,
          f"holds the files of an earlier run ({', '.join(present)}): pass --overwrite to "
          "replace them (or --resume to continue that run), or use another workdir")  # fmt: skip
    return
  if os.path.exists(saved):
    with open(saved) as f:
      before = json.load(f)
    now = json.loads(json.dumps(config.to_dict(), default=io.jsonable))
    changed = _differences(before, now)
    check(not changed, "--resume", ", ".join(changed[:5]),
          f"the config differs from the one of the run in {workdir} in these fields; "
          "resume with the same config (or start a new workdir)")  # fmt: skip


def claim(
  config: ml_collections.ConfigDict, workdir: str, resume: bool, overwrite: bool
) -> io.FolderLock | None:
  """Makes `workdir` this run's: process 0 creates it, locks it for the run's life
  (returned), checks it (`check_resumable`), removes a killed run's temporary files
  and, with `overwrite`, the old manifest and checkpoints. Under `jax.distributed` the
  other processes learn process 0's verdict, so every process stops on a refusal."""
  error, lock = None, None
  if distributed.is_writer():
    try:
      os.makedirs(workdir, exist_ok=True)
      lock = io.FolderLock(os.path.join(workdir, LOCK)).acquire()
      check_resumable(config, workdir, resume, overwrite)
      io.remove_temporaries(workdir, (*RESULTS, io.MANIFEST))
      if overwrite:
        io.remove_manifest(workdir)
        shutil.rmtree(os.path.join(workdir, CHECKPOINTS), ignore_errors=True)
    except io.Locked as e:
      error = ConfigError(
        f"workdir={workdir!r} is invalid: another run is using it ({e.holder}, {e.path}): "
        "wait for it to end, stop it, or use another workdir"
      )
    except ConfigError as e:
      error = e
    if error is not None and lock is not None:
      lock.release()
  if jax.process_count() > 1:  # process 0's verdict, to every process
    refused = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if refused and error is None:
      error = ConfigError(f"workdir={workdir!r} is invalid: process 0 refused it (see its error)")
  if error is not None:
    raise error
  return lock

"""Runs a comparison from an ml_collections config file.

  python -m experiments.main --workdir=runs/default
  python -m experiments.main --config=experiments/configs/default.py \
      --workdir=runs/x --config.schedule.num_rounds=100

A workdir belongs to one run: a second run into it while the first runs is refused
(naming its pid), and so is a workdir that holds an earlier run's files unless
`--overwrite` (start over) or `--resume`. A run with
`--config.engine.checkpoint_every=M` that was killed continues with the same command
plus `--resume`. Under several hosts, start the same command in each
with `--distributed` (and, outside SLURM/TPU, `--coordinator_address`,
`--num_processes`, `--process_id`).

Sweeps: `--sweep=NAME=v1,v2,...` (repeatable; the axes multiply) sweeps a config field
(`schedule.protocol`, `data.num_clients`...) or a hyperparameter (`local.lr`,
`fedbuff.beta`), and `--zip=A,B` pairs swept axes instead (equal lengths):

  python -m experiments.main --workdir=runs/wc --config.algorithms=fedavg,fedsgd \
      --sweep=schedule.protocol=sync,semi_async --sweep=local.lr=0.05,0.1

is the same run as a config file whose `get_sweep()` returns `sweep.product(sweep.axis(
"schedule.protocol", ["sync", "semi_async"]), sweep.axis("local.lr", [0.05, 0.1]))`, and
multiplies with a config file's own sweep (see `fedqs_jax.sweep`). The grid is printed first.

Bad input (flags, the config file, its overrides, the workdir) prints one line and exits 2.
This file is intentionally short: the work is in `fedqs_jax.run`.
"""

import os

from absl import flags, logging

from fedqs_jax import cli

_DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "default.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the run's outputs.", required=True)
_RESUME = flags.DEFINE_bool("resume", False, "Continue the killed run in --workdir.")
_OVERWRITE = flags.DEFINE_bool(
  "overwrite", False, "Replace the files (and checkpoints) of an earlier run in --workdir."
)
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Run under jax.distributed.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes of the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_SWEEP = flags.DEFINE_multi_string(
  "sweep",
  [],
  "A swept axis, NAME=v1,v2,... (repeatable: the axes multiply), e.g. "
  "--sweep=schedule.protocol=sync,semi_async --sweep=local.lr=0.01,0.1.",
)
_ZIP = flags.DEFINE_multi_string(
  "zip",
  [],
  "--sweep axes to pair instead of multiply, A,B,... (repeatable; equally many "
  "values each), e.g. --zip=fedqs.a,fedqs.k.",
)
_CONFIG_FILE = []  # the --config file's path, set by `parse_flags`


parse_flags = cli.config_parser(_DEFAULT, _CONFIG_FILE)


def main(argv):
  cli.check_no_arguments(argv)
  if not _DISTRIBUTED.value:  # before loading anything (under jax.distributed: process 0's)
    cli.check_writable_folder("workdir", _WORKDIR.value)
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  from fedqs_jax import distributed, run, sweep  # after flag parsing: importing jax is not free

  config = sweep.with_file_sweep(FLAGS.config, _CONFIG_FILE[-1])
  config = sweep.with_flag_sweep(config, _SWEEP.value, _ZIP.value)
  sweep.check_groups(config)
  if _DISTRIBUTED.value:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if distributed.is_writer():  # only process 0 writes the workdir
      cli.check_writable_folder("workdir", _WORKDIR.value)
  grid = sweep.describe(config)
  if grid and distributed.is_writer():
    print(grid, flush=True)
  run.run(config, _WORKDIR.value, resume=_RESUME.value, overwrite=_OVERWRITE.value)


FLAGS = flags.FLAGS

if __name__ == "__main__":
  cli.run(main, parse_flags)

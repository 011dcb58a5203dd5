"""Runs a comparison from an ml_collections config file.

  python -m experiments.main --workdir=runs/default
  python -m experiments.main --config=experiments/configs/default.py \
      --workdir=runs/x --config.schedule.num_rounds=100

A run with `--config.engine.checkpoint_every=M` that was killed continues with the
same command plus `--resume`. Under several hosts, start the same command in each
with `--distributed` (and, outside SLURM/TPU, `--coordinator_address`,
`--num_processes`, `--process_id`).

Bad input (flags, the config file, its overrides, the workdir) prints one line and exits 2.
This file is intentionally short: the work is in `fedqs_jax.run`.
"""

import os

from absl import flags, logging
from ml_collections import config_flags

from fedqs_jax import cli
from fedqs_jax.errors import ConfigError

_DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "default.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the run's outputs.", required=True)
_RESUME = flags.DEFINE_bool("resume", False, "Continue the killed run in --workdir.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Run under jax.distributed.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes of the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_CONFIG_FILE = []  # the --config file's path, set by `parse_flags`


def parse_flags(argv: list[str]) -> list[str]:
  """Loads `--config=file[:arg]` and checks its `--config.<field>` overrides, then lets
  absl parse the flags; any bad input is one `error:` line and exit 2, before anything runs.

  (`config_flags.DEFINE_config_file` would load the file and apply the overrides when
  this module is imported, where a bad override or a broken file is a traceback.)
  """
  try:
    argv, spec = cli.split_config(argv, _DEFAULT)
    config, path = cli.load_config(spec)
    cli.check_overrides(config, argv)
  except ConfigError as e:
    cli.fail(e)
  _CONFIG_FILE.append(path)
  try:
    config_flags.DEFINE_config_dict(
      "config", config, "The experiment config: --config=file.py[:arg], default " + _DEFAULT,
      sys_argv=argv,
    )  # fmt: skip
  except Exception as e:  # config_flags applies the overrides here
    cli.fail(cli.flag_error(e))
  return cli.parse_flags(argv)


def main(argv):
  cli.check_no_arguments(argv)
  if not _DISTRIBUTED.value:  # before loading anything (under jax.distributed: process 0's)
    cli.check_writable_folder("workdir", _WORKDIR.value)
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  from fedqs_jax import distributed, run, sweep  # after flag parsing: importing jax is not free

  config = sweep.with_file_sweep(FLAGS.config, _CONFIG_FILE[-1])
  if _DISTRIBUTED.value:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if distributed.is_writer():  # only process 0 writes the workdir
      cli.check_writable_folder("workdir", _WORKDIR.value)
  run.run(config, _WORKDIR.value, resume=_RESUME.value)


FLAGS = flags.FLAGS

if __name__ == "__main__":
  cli.run(main, parse_flags)

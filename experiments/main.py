"""Runs a comparison from an ml_collections config file.

  python -m experiments.main --workdir=runs/default
  python -m experiments.main --config=experiments/configs/default.py \
      --workdir=runs/x --config.schedule.num_rounds=100

A run with `--config.engine.checkpoint_every=M` that was killed continues with the
same command plus `--resume`. Under several hosts, start the same command in each
with `--distributed` (and, outside SLURM/TPU, `--coordinator_address`,
`--num_processes`, `--process_id`).

This file is intentionally short: the work is in `fedqs_jax.run`.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from fedqs_jax.errors import ConfigError

_DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "default.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the run's outputs.", required=True)
_RESUME = flags.DEFINE_bool("resume", False, "Continue the killed run in --workdir.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Run under jax.distributed.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes of the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  from fedqs_jax import distributed, run, sweep  # after flag parsing: importing jax is not free

  try:
    config = sweep.with_file_sweep(_CONFIG.value, config_flags.get_config_filename(FLAGS["config"]))
    if _DISTRIBUTED.value:
      distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    run.run(config, _WORKDIR.value, resume=_RESUME.value)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


FLAGS = flags.FLAGS

if __name__ == "__main__":
  app.run(main)

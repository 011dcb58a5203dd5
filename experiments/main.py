"""Runs a comparison from an ml_collections config file.

  python -m experiments.main --workdir=runs/default
  python -m experiments.main --config=experiments/configs/default.py \
      --workdir=runs/x --config.schedule.num_rounds=100

This file is intentionally short: the work is in `fedqs_jax.run`.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from fedqs_jax.errors import ConfigError

_DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "default.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the run's outputs.", required=True)


def main(argv):
  del argv
  from fedqs_jax import run  # after flag parsing: importing jax is not free

  try:
    run.run(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)

"""Shared tiny configurations for fast tests, in this process or through the CLI."""

import os
import subprocess
import sys

import ml_collections

from experiments.configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Digits, 12 clients, an 8-unit MLP, 20 rounds of K = 4: compiles in seconds.
SHRINK = {
  "data.num_clients": 12,
  "data.dirichlet_alpha": 0.5,
  "model.hidden": (8,),
  "schedule.num_rounds": 20,
  "schedule.buffer_size": 4,
  "time.speed_ratio": 10,
  "local.epochs": 1,
  "engine.eval_every": 5,
  "algorithms": "fedavg",
}


def tiny_config(**overrides):
  """The default config shrunk by `SHRINK`, then overridden ("section.field": value)."""
  config = default.get_config()
  for key, value in {**SHRINK, **overrides}.items():
    node = config
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return config


def tiny_args(**overrides) -> list[str]:
  """The command-line flags of `tiny_config(**overrides)`."""
  return [f"--config.{key}={value}" for key, value in {**SHRINK, **overrides}.items()]


def start_cli(*args) -> subprocess.Popen:
  """`python -m experiments.main *args` in the background (outputs piped)."""
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1", JAX_PLATFORMS="cpu")
  return subprocess.Popen(
    [sys.executable, "-m", "experiments.main", *args],
    cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
  )  # fmt: skip


def finish(proc: subprocess.Popen) -> str:
  """The stdout of a CLI run that must succeed."""
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return out


def data_config(**overrides):
  """The default config's data section with 10 clients and Dirichlet 0.5, overridden.

  Built from a plain dict, so an override may change a field's type (to test validation).
  """
  fields = {**default.get_config().data.to_dict(), "num_clients": 10, "dirichlet_alpha": 0.5}
  return ml_collections.ConfigDict({**fields, **overrides})

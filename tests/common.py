"""Shared tiny configurations for fast tests."""

import ml_collections

from experiments.configs import default


def tiny_config(**overrides):
  """Digits, 12 clients, an 8-unit MLP, 20 rounds of K = 4: compiles in seconds."""
  config = default.get_config()
  config.data.num_clients = 12
  config.data.dirichlet_alpha = 0.5
  config.model.hidden = (8,)
  config.schedule.num_rounds = 20
  config.schedule.buffer_size = 4
  config.time.speed_ratio = 10
  config.local.epochs = 1
  config.engine.eval_every = 5
  config.algorithms = "fedavg"
  for key, value in overrides.items():
    node = config
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return config


def data_config(**overrides):
  """The default config's data section with 10 clients and Dirichlet 0.5, overridden.

  Built from a plain dict, so an override may change a field's type (to test validation).
  """
  fields = {**default.get_config().data.to_dict(), "num_clients": 10, "dirichlet_alpha": 0.5}
  return ml_collections.ConfigDict({**fields, **overrides})

"""Device-memory estimate of a run, checked before anything is allocated for training.

Per grid point (exact, from `jax.eval_shape` of the algorithm's own functions):

  global and previous model        2 P, and the round-start copy of both
                                   that failure isolation reverts to: 2 P
  payload buffer                   S x payload (P plus an algorithm's scalars)
  client state                     the algorithm's [N, ...] state (FedQS: N x P)
  server state                     the algorithm's (FedBuff: P of momentum)

plus the local-training working set of the clients trained at once (the widest
dispatch, usually the version-0 one): trained copy, gradient, momentum and update,
4 P each, and one minibatch's activations. In `client_mode="lanes"` only the lanes
hold that working set; each task then keeps its trained copy (P). The data arrays
are shared by the grid.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np

from fedqs_jax.algorithms.base import Algorithm, payload_shape
from fedqs_jax.data.base import FederatedData
from fedqs_jax.errors import ConfigError


def tree_bytes(tree) -> int:
  return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def estimate(
  algorithm: Algorithm,
  params,
  data: FederatedData,
  *,
  num_slots: int,
  train_width: int,
  grid_size: int,
  hparams: dict,
  num_devices: int = 1,
  activation_bytes: int = 0,
  constant_bytes: int = 0,
  train_lanes: float | None = None,
) -> dict[str, int]:
  """Bytes of one grid point's state, of the whole grid, of the shared data, and of
  the busiest device (the grid axis is sharded over `num_devices`, the data replicated).

  `constant_bytes`: arrays the model closes over (FedSQ's structural copy), counted once
  with the data. `train_lanes`: lanes per point when tasks train in lanes (None: every
  task of the widest dispatch in lockstep)."""
  server, clients = jax.eval_shape(lambda p: algorithm.init(p, data.num_clients, hparams), params)
  payload = payload_shape(algorithm, params, clients, hparams)
  p = tree_bytes(params)
  # Global and previous model, and the copy of both that failure isolation keeps per round.
  point = 4 * p + num_slots * tree_bytes(payload) + tree_bytes(clients) + tree_bytes(server)
  # Each client trained in lockstep: parameters, gradient, optimizer trace, update (4P),
  # and one minibatch's activations (`activation_bytes`: inputs, intermediates, cotangents).
  training = train_width * (4 * p + activation_bytes)
  if train_lanes is not None:  # lanes work, each task keeps its trained copy
    training = train_width * p + math.ceil(train_lanes * (4 * p + activation_bytes))
  point += training
  shared = tree_bytes(data) + constant_bytes  # replicated on every device
  per_device = -(-grid_size // num_devices)
  return {
    "points": grid_size,
    "devices": num_devices,
    "points_per_device": per_device,
    "per_point": point,
    "per_point_training": training,  # of which local training's working set
    "grid": grid_size * point,
    "shared_data": shared,
    "total": grid_size * point + shared,
    "per_device": per_device * point + shared,
  }


def available_bytes(device=None) -> int:
  """The device's memory limit; for a CPU device, the host memory available now
  (`MemAvailable` of /proc/meminfo: free plus reclaimable caches), not the total RAM."""
  device = device or jax.local_devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024  # in kB
  except (OSError, ValueError, IndexError):
    pass
  try:  # no /proc (macOS...): the free pages, else the total
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
  except (ValueError, OSError):
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_fits(estimate_bytes: dict[str, int], limit: int) -> None:
  """Raises `ConfigError` saying by how much the busiest device is over `limit` (one
  device's memory) and what to change."""
  total = estimate_bytes.get("per_device", estimate_bytes["total"])
  if total <= limit:
    return
  gib = 2.0**30
  per_point = estimate_bytes["per_point"]
  fit = max(int((limit - estimate_bytes["shared_data"]) // max(per_point, 1)), 0)
  raise ConfigError(
    f"memory: the run needs about {total / gib:.2f} GiB per device but "
    f"{limit / gib:.2f} GiB are available ({(total - limit) / gib:.2f} GiB over): "
    f"{estimate_bytes.get('points_per_device', estimate_bytes['points'])} grid points "
    f"per device (of {estimate_bytes['points']} on {estimate_bytes.get('devices', 1)} "
    f"devices) x {per_point / gib:.3f} GiB + {estimate_bytes['shared_data'] / gib:.3f} GiB "
    f"of data. About {fit} points fit per device: "
    "sweep fewer values or seeds, or lower schedule.buffer_size or data.num_clients "
    "(payload slots and client state scale with them), or use more devices "
    "(engine.memory_limit_gb overrides the limit)"
  )

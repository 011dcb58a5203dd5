"""Several hosts: the same program in every process, the grid axis sharded over all devices.

A run under `jax.distributed` is the very program of a single process: `run.train`
puts the grid axis on a `Mesh` of `jax.devices()` (every process's devices), each
process computes its share of the grid points, results are gathered to every
process, and process 0 alone writes files. Launch one process per host with the
same flags (see the README: a command per host, or a SLURM array where
`jax.distributed.initialize()` finds everything by itself).
"""

from __future__ import annotations

from typing import Any

import jax
from jax.experimental import multihost_utils


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """`jax.distributed.initialize` (arguments None: detected from SLURM, TPU or MPI).

  On CPU hosts the processes exchange results over gloo.
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )


def is_writer() -> bool:
  """Whether this process writes the run's files (process 0)."""
  return jax.process_index() == 0


def to_host(tree: Any) -> Any:
  """NumPy copies of a pytree of (possibly globally sharded) arrays, in every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)

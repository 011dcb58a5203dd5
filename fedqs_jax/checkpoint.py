"""Checkpoints of a long run with orbax: kill it at any moment, `--resume` it, same numbers.

One `Checkpoints` per algorithm of a run (`<workdir>/checkpoints/<algorithm>`).
Every `every` chunks (and after the last) it saves, at step = chunks done:

  state    the engine's `SimState` of the whole grid: parameters, payload slots,
           client and server state, round counter (the schedule position: a chunk
           reads the on-device schedule at `state.round`), PRNG key, divergence flags;
  history  the host-side metrics so far: evaluations [G, chunks] and the per-round
           metrics [G, rounds].

The schedule is not saved: it is a pure function of the config and the seeds, so a
resumed run rebuilds the very same one. orbax writes each step to a temporary
folder and renames it when complete, so a killed save never leaves a step that
`latest_step` would pick up. Sharded states (several devices or hosts) are saved
and restored with their shardings.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

History = dict[str, np.ndarray]


class Checkpoints:
  """Saves and restores (state, history) of one algorithm's grid, every `every` chunks."""

  def __init__(self, directory: str, every: int):
    self.every = every
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False),
    )

  def latest(self) -> int | None:
    """Chunks done by the newest complete checkpoint (None: there is none)."""
    return self._manager.latest_step()

  def due(self, chunks_done: int, num_chunks: int) -> bool:
    return self.every > 0 and (chunks_done % self.every == 0 or chunks_done == num_chunks)

  def save(self, chunks_done: int, state: Any, history: History) -> None:
    """Blocks until the step is written (the state is donated by the next chunk)."""
    self._manager.save(
      chunks_done,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), history=ocp.args.StandardSave(history)
      ),
    )
    self._manager.wait_until_finished()

  def restore(self, like_state: Any) -> tuple[int, Any, History]:
    """(chunks done, state, history) of the newest checkpoint; `like_state` gives the
    structure, shapes and shardings of the state."""
    step = self.latest()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    out = self._manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(like_state), history=ocp.args.StandardRestore()
      ),
    )
    history = {k: np.asarray(v) for k, v in out["history"].items()}
    return step, out["state"], history

  def close(self) -> None:
    self._manager.close()

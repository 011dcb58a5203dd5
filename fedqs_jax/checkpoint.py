"""Checkpoints of a long run with orbax: kill it at any moment, `--resume` it, same numbers.

One `Checkpoints` per algorithm of a run (`<workdir>/checkpoints/<algorithm>`).
Every `every` chunks (and after the last) it saves, at step = chunks done:

  state    the engine's `SimState` of the whole grid: parameters, payload slots,
           client and server state, round counter (the schedule position: a chunk
           reads the on-device schedule at `state.round`), PRNG key, divergence flags;
  history  the host-side metrics so far: evaluations [G, chunks] and the per-round
           metrics [G, rounds];
  meta     the fingerprint of what the state belongs to: the hash of the resolved
           config, the algorithm and the grid (its points and seeds). A restore refuses
           (`ConfigError`) a step whose fingerprint differs from the run's own: a
           checkpoint of another run (another config, or a second run started into
           the same workdir) never continues this one.

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

from fedqs_jax.errors import ConfigError

History = dict[str, np.ndarray]
Fingerprint = dict[str, Any]


class Checkpoints:
  """Saves and restores (state, history) of one algorithm's grid, every `every` chunks,
  each step stamped with `fingerprint` (JSON: what the state belongs to)."""

  def __init__(self, directory: str, every: int, fingerprint: Fingerprint | None = None):
    self.every = every
    self.fingerprint = dict(fingerprint or {})
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
        state=ocp.args.StandardSave(state),
        history=ocp.args.StandardSave(history),
        meta=ocp.args.JsonSave(self.fingerprint),
      ),
    )
    self._manager.wait_until_finished()

  def saved_fingerprint(self, step: int) -> Fingerprint | None:
    """The fingerprint stamped on `step` (None: it has none, or it cannot be read)."""
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      return dict(out["meta"])
    except Exception:  # no meta item (an older checkpoint), or an unreadable one
      return None

  def verify(self) -> None:
    """Raises `ConfigError` unless the newest step (if any) carries this fingerprint."""
    step = self.latest()
    if step is None:
      return
    saved = self.saved_fingerprint(step)
    if saved == self.fingerprint:
      return
    if saved is None:
      why = "has no fingerprint (written by an older version?)"
    else:
      keys = sorted(k for k in set(saved) | set(self.fingerprint)
                    if saved.get(k) != self.fingerprint.get(k))  # fmt: skip
      verb = "differs" if len(keys) == 1 else "differ"
      why = f"belongs to another run (its {', '.join(keys)} {verb} from this run's)"
    raise ConfigError(
      f"--resume is invalid: the checkpoint {self.directory}/{step} {why}; resume only with "
      "the config that wrote it, or pass --overwrite to start over"
    )

  def restore(self, like_state: Any) -> tuple[int, Any, History]:
    """(chunks done, state, history) of the newest checkpoint; `like_state` gives the
    structure, shapes and shardings of the state. `ConfigError` if its fingerprint is
    not this one's (`verify`)."""
    step = self.latest()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    self.verify()
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

"""Summary statistics of accuracy curves (spec/EXPERIMENTS.md, "Metrics")."""

from __future__ import annotations

import numpy as np


def summarize(
  rounds: np.ndarray,
  times: np.ndarray,
  accuracy: np.ndarray,
  target: float,
  final_window: int = 10,
) -> dict[str, float]:
  """Final/best accuracy, rounds and simulated time to `target`, oscillation.

  Args:
    rounds: [E] round number of each evaluation (1-based: after that many aggregations).
    times: [E] simulated time of each evaluation.
    accuracy: [E] test accuracy of each evaluation.
    target: accuracy that counts as converged.
    final_window: the final accuracy is the mean of this many last evaluations.

  Returns:
    final_accuracy, best_accuracy, rounds_to_best (the first evaluation at the best
    accuracy: FedSQ's "rounds to BVA"), rounds_to_target and time_to_target (NaN if never
    reached), oscillation_std (std over the last 20% of evaluations) and
    mean_abs_change (mean |acc_e - acc_(e-1)| over all evaluations).
  """
  accuracy = np.asarray(accuracy, dtype=np.float64)
  hit = np.flatnonzero(accuracy >= target)
  tail = accuracy[-max(1, int(round(0.2 * len(accuracy)))) :]
  return {
    "final_accuracy": float(accuracy[-final_window:].mean()),
    "best_accuracy": float(accuracy.max()),
    "rounds_to_best": float(rounds[int(np.argmax(accuracy))]),
    "rounds_to_target": float(rounds[hit[0]]) if hit.size else float("nan"),
    "time_to_target": float(times[hit[0]]) if hit.size else float("nan"),
    "oscillation_std": float(tail.std()),
    "mean_abs_change": float(np.abs(np.diff(accuracy)).mean()) if len(accuracy) > 1 else 0.0,
  }

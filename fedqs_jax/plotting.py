"""Accuracy curves (matplotlib, Agg backend, PNG files written atomically)."""

from __future__ import annotations

from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedqs_jax import io  # noqa: E402


def accuracy_curves(rows: list[dict], path: str, label=lambda row: row["algorithm"]) -> None:
  """Test accuracy vs round and vs simulated time; mean over seeds, shaded +- std."""
  curves: dict[str, dict[int, list[tuple[int, float, float]]]] = defaultdict(
    lambda: defaultdict(list)
  )
  for r in rows:
    curves[label(r)][r["seed"]].append((r["round"], r["time"], r["test_accuracy"]))
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
  for name, per_seed in curves.items():
    arr = np.array([sorted(v) for v in per_seed.values()])  # [seeds, E, 3]
    mean, std = arr[..., 2].mean(0), arr[..., 2].std(0)
    for ax, x in ((axes[0], arr[0, :, 0]), (axes[1], arr[..., 1].mean(0))):
      (line,) = ax.plot(x, 100 * mean, label=name)
      if arr.shape[0] > 1:
        ax.fill_between(x, 100 * (mean - std), 100 * (mean + std), alpha=0.2,
                        color=line.get_color())  # fmt: skip
  axes[0].set_xlabel("round")
  axes[1].set_xlabel("simulated time")
  for ax in axes:
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
  axes[0].legend()
  with io.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)

"""Accuracy curves (matplotlib, Agg backend, PNG files written atomically)."""

from __future__ import annotations

from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedqs_jax import io  # noqa: E402


def _is_diverged(row: dict) -> bool:
  """A metrics row flagged diverged (a bool, or its CSV text)."""
  return str(row.get("diverged", False)) == "True"


def accuracy_curves(
  rows: list[dict],
  path: str,
  label=lambda row: row["algorithm"],
  diverged: dict[str, int] | None = None,
) -> None:
  """Test accuracy vs round and vs simulated time; mean over seeds, shaded +- std.

  A curve of which some seed diverged is dashed and labelled "(diverged@r)": r from
  `diverged` ({label: round}, e.g. `report.diverged_rounds` of the summary) or else
  the first evaluated round whose row is flagged `diverged`.
  """
  curves: dict[str, dict[int, list[tuple[int, float, float]]]] = defaultdict(
    lambda: defaultdict(list)
  )
  marks = dict(diverged or {})
  for r in rows:
    curves[label(r)][r["seed"]].append((r["round"], r["time"], r["test_accuracy"]))
    if _is_diverged(r) and label(r) not in (diverged or {}):
      marks[label(r)] = min(int(r["round"]), marks.get(label(r), int(r["round"])))
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
  for name, per_seed in curves.items():
    arr = np.array([sorted(v) for v in per_seed.values()])  # [seeds, E, 3]
    mean, std = arr[..., 2].mean(0), arr[..., 2].std(0)
    style = {"linestyle": "--"} if name in marks else {}
    text = f"{name} (diverged@{marks[name]})" if name in marks else name
    for ax, x in ((axes[0], arr[0, :, 0]), (axes[1], arr[..., 1].mean(0))):
      (line,) = ax.plot(x, 100 * mean, label=text, **style)
      if arr.shape[0] > 1:
        ax.fill_between(x, 100 * (mean - std), 100 * (mean + std), alpha=0.2,
                        color=line.get_color())  # fmt: skip
  axes[0].set_xlabel("round")
  axes[1].set_xlabel("simulated time")
  for ax in axes:
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
  if len(curves) <= 12:
    axes[0].legend()
  else:  # a sweep's many points: a legend would hide the plot
    title = f"{len(curves)} curves (one per point; summary.csv names them)"
    if marks:
      title += f"; dashed: {len(marks)} diverged"
    axes[0].set_title(title)
  with io.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)


def _final_by_point(
  rows: list[dict], x: str, y: str | None, metric: str
) -> tuple[dict[tuple, list[float]], set[tuple]]:
  """{(x value, y value): [metric of every seed and of every other swept value]}, and the
  cells that hold a diverged row (a non-empty `diverged_round`)."""
  cells: dict[tuple, list[float]] = defaultdict(list)
  diverged: set[tuple] = set()
  for r in rows:
    if r.get(x, "") in ("", None) or (y is not None and r.get(y, "") in ("", None)):
      continue
    key = (float(r[x]), float(r[y]) if y is not None else None)
    cells[key].append(float(r[metric]))
    if r.get("diverged_round", "") not in ("", None):
      diverged.add(key)
  return cells, diverged


def sensitivity(
  summary_rows: list[dict], x: str, y: str, path: str, metric: str = "final_accuracy"
) -> None:
  """Final accuracy over two swept hyperparameters: a heatmap and a line per `y` value.

  Each cell is the mean over seeds and over the values of every other swept
  hyperparameter (the marginal mean), as in a sensitivity analysis. A cell with a
  diverged run (its frozen numbers) is labelled "diverged" and drawn as a red cross
  on the lines: it never passes for a good value.
  """
  cells, diverged = _final_by_point(summary_rows, x, y, metric)
  if not cells:
    raise ValueError(f"no rows sweep both {x!r} and {y!r}")
  xs = sorted({k[0] for k in cells})
  ys = sorted({k[1] for k in cells})
  grid = np.full((len(ys), len(xs)), np.nan)
  for (vx, vy), values in cells.items():
    grid[ys.index(vy), xs.index(vx)] = 100 * np.mean(values)
  fig, (heat, lines) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
  image = heat.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
  heat.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
  heat.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
  heat.set_xlabel(x)
  heat.set_ylabel(y)
  for i in range(len(ys)):
    for j in range(len(xs)):
      if (xs[j], ys[i]) in diverged:
        heat.text(j, i, f"{grid[i, j]:.1f}\ndiverged", ha="center", va="center", color="r",
                  fontsize=7, fontweight="bold")  # fmt: skip
      elif np.isfinite(grid[i, j]):
        heat.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="w", fontsize=8)
  fig.colorbar(image, ax=heat, label=f"{metric} (%)")
  marked = False
  for i, vy in enumerate(ys):
    lines.plot(xs, grid[i], marker="o", label=f"{y}={vy:g}")
    bad = [j for j, vx in enumerate(xs) if (vx, vy) in diverged]
    if bad:
      lines.plot([xs[j] for j in bad], grid[i, bad], "x", color="r", markersize=10, mew=2,
                 label=None if marked else "diverged")  # fmt: skip
      marked = True
  lines.set_xscale("log" if min(xs) > 0 and max(xs) / min(xs) >= 20 else "linear")
  lines.set_xlabel(x)
  lines.set_ylabel(f"{metric} (%)")
  lines.grid(alpha=0.3)
  lines.legend()
  with io.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)

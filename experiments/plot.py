"""Plots of a finished run's CSV files: accuracy curves per algorithm, sensitivity maps.

  python -m experiments.plot --workdir=runs/sensitivity
  python -m experiments.plot --workdir=runs/sensitivity --x=a --y=m0 [--algorithm=fedqs_avg]
  python -m experiments.plot --compare=runs/a,runs/b --out=runs/a_vs_b.png

Writes `curves_<algorithm>.png` (one curve per sweep point, mean over seeds) and, for
every pair of swept hyperparameters (or the one given by --x/--y),
`sensitivity_<algorithm>_<x>_<y>.png`: a heatmap and lines of the final accuracy,
averaged over seeds and the other swept values. `--compare` draws the curves of several
runs in one figure, each labelled with its folder's name (e.g. one schedule per run).
This file is intentionally short.
"""

import csv
import itertools
import os
import sys

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A run's folder (summary.csv, metrics.csv).")
_COMPARE = flags.DEFINE_list("compare", None, "Several runs' folders, drawn in one figure.")
_OUT = flags.DEFINE_string("out", None, "The --compare figure's path.")
_X = flags.DEFINE_string("x", None, "Swept hyperparameter on the x axis.")
_Y = flags.DEFINE_string("y", None, "Swept hyperparameter on the y axis.")
_ALGORITHM = flags.DEFINE_string("algorithm", None, "Only this algorithm (default: each).")
_METRIC = flags.DEFINE_string("metric", "final_accuracy", "A summary.csv column.")


def read(path: str) -> list[dict]:
  with open(path) as f:
    return list(csv.DictReader(f))


def compare(folders: list[str], out: str) -> None:
  from fedqs_jax import plotting

  rows = []
  for folder in folders:
    try:
      metrics = read(os.path.join(folder, "metrics.csv"))
    except FileNotFoundError:
      sys.exit(f"error: {folder}/metrics.csv is missing: --compare takes finished runs' folders")
    name = os.path.basename(os.path.normpath(folder))
    for r in metrics:
      rows.append({"run": f"{name}: {r['algorithm']}", "seed": int(r["seed"]),
                   "round": int(r["round"]), "time": float(r["time"]),
                   "test_accuracy": float(r["test_accuracy"])})  # fmt: skip
  plotting.accuracy_curves(rows, out, lambda r: r["run"])
  print(out)


def main(argv):
  del argv
  from fedqs_jax import plotting, run

  if _COMPARE.value:
    if not _OUT.value:
      sys.exit("error: --compare needs --out")
    return compare(_COMPARE.value, _OUT.value)
  if not _WORKDIR.value:
    sys.exit("error: give --workdir (one run) or --compare (several)")
  workdir = _WORKDIR.value
  try:
    summary, metrics = (read(os.path.join(workdir, n)) for n in ("summary.csv", "metrics.csv"))
  except FileNotFoundError as e:
    sys.exit(f"error: {e.filename} is missing: --workdir must be a finished run's folder")
  if summary and _METRIC.value not in summary[0]:
    sys.exit(f"error: --metric={_METRIC.value} is not a column of summary.csv")
  names = (
    [_ALGORITHM.value] if _ALGORITHM.value else list(dict.fromkeys(r["algorithm"] for r in summary))
  )
  for name in names:
    rows = [r for r in summary if r["algorithm"] == name]
    if not rows:
      sys.exit(f"error: --algorithm={name} has no rows in summary.csv")
    curves = [
      {
        **r,
        "seed": int(r["seed"]),
        "round": int(r["round"]),
        "time": float(r["time"]),
        "test_accuracy": float(r["test_accuracy"]),
      }  # fmt: skip
      for r in metrics
      if r["algorithm"] == name
    ]
    out = os.path.join(workdir, f"curves_{name}.png")
    plotting.accuracy_curves(curves, out, run.curve_label)
    print(out)
    swept = list(dict.fromkeys(
      part.split("=")[0] for r in rows for part in r["sweep"].split(",") if part))  # fmt: skip
    pairs = [(_X.value, _Y.value)] if _X.value and _Y.value else itertools.combinations(swept, 2)
    for x, y in pairs:
      for axis in (x, y):
        if axis not in swept:
          sys.exit(f"error: {axis!r} is not swept for {name}; swept: {swept}")
      out = os.path.join(workdir, f"sensitivity_{name}_{x}_{y}.png")
      plotting.sensitivity(rows, x, y, out, _METRIC.value)
      print(out)


if __name__ == "__main__":
  app.run(main)

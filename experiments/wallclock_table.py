"""The wall-clock table of a finished run: simulated time to the target accuracy per
(schedule group, algorithm), and its reduction relative to synchronous FedAvg.

  python -m experiments.wallclock_table --workdir=runs/wallclock_digits

Reads summary.csv (`time_to_target`: the simulated time of the first evaluation at or
above the run's `target_accuracy`), metrics.csv and config.json. Per (group, algorithm):
the time to target, mean +- std (population) over the seeds that reached it, and how
many did (a seed that never did is named, never averaged in). For each synchronous group
whose reference algorithm (`--reference`, FedAvg) reached the target, a column
"vs <group>": the reduction 1 - T / T_ref per seed (seed s against the reference's seed
s), mean +- std over the seeds where both reached the target, and on how many. Writes the
accuracy vs simulated time of every curve (mean over seeds, +- std shaded) to `--out`
(default: `wallclock.png` in the workdir).
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import sys
import textwrap
from collections import defaultdict

from absl import flags

from fedqs_jax import cli, io

PLOT = "wallclock.png"


def define_flags() -> None:
  """The command line's flags (defined when run, so that importing `table` and `plot`
  defines none)."""
  flags.DEFINE_string("workdir", None, "A finished run's folder.", required=True)
  flags.DEFINE_string("out", None, "The plot's path (default: WORKDIR/wallclock.png).")
  flags.DEFINE_string(
    "reference", "fedavg", "The algorithm whose synchronous groups the reductions compare with."
  )


def group_name(row: dict, schedule: dict) -> str:
  """`"sync, all N"`, `"sync, M=10"` or `"semi_async, K=10"`: a row's schedule group, from
  its static sweep columns, else the run's `schedule` config section."""
  protocol = row.get("schedule.protocol") or schedule["protocol"]
  if protocol == "sync":
    m = int(row.get("schedule.clients_per_round") or schedule.get("clients_per_round", 0))
    return f"sync, M={m}" if m else "sync, all N"
  if protocol in ("semi_async", "tick", "queueing"):
    k = row.get("schedule.buffer_size") or schedule.get("buffer_size")
    return f"{protocol}, K={int(k)}"
  return protocol


def _float(value) -> float:
  return float(value) if value not in ("", None) else math.nan


def times_to_target(rows: list[dict], schedule: dict) -> dict[tuple[str, str], dict[int, float]]:
  """{(group, algorithm): {seed: time to target (NaN: never reached or diverged)}}, in the
  order of the rows."""
  out: dict[tuple[str, str], dict[int, float]] = {}
  for r in rows:
    key = (group_name(r, schedule), r["algorithm"])
    diverged = r.get("diverged_round", "") not in ("", None)
    out.setdefault(key, {})[int(r["seed"])] = math.nan if diverged else _float(r["time_to_target"])
  return out


def reductions(times: dict[int, float], reference: dict[int, float]) -> dict[int, float]:
  """{seed: 1 - T / T_ref} over the seeds where both reached the target."""
  return {
    s: 1.0 - t / reference[s]
    for s, t in times.items()
    if math.isfinite(t) and math.isfinite(reference.get(s, math.nan)) and reference[s] > 0
  }


def _stat(values: list[float], scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
  mean = statistics.fmean(values) * scale
  std = statistics.pstdev(values) * scale
  return f"{mean:.{digits}f}{unit} +- {std:.{digits}f}{unit}"


def table(rows: list[dict], schedule: dict, target: float, reference: str = "fedavg") -> str:
  """The table of summary rows (see the module docstring)."""
  times = times_to_target(rows, schedule)
  refs = [g for (g, a), t in times.items() if a == reference and g.startswith("sync")]
  refs = [g for g in refs if any(math.isfinite(v) for v in times[(g, reference)].values())]
  gw = max([5] + [len(g) for g, _ in times])
  aw = max([9] + [len(a) for _, a in times])
  head = f"{'group':<{gw}}  {'algorithm':<{aw}}  {f'time to {target:.0%}':>15}  {'reached':>7}"
  head += "".join(f"  {f'vs {g}':>19}" for g in refs)
  lines = [head, "-" * len(head)]
  notes = []
  for (group, name), per_seed in times.items():
    reached = [t for t in per_seed.values() if math.isfinite(t)]
    shown = _stat(reached) if reached else "never"
    line = f"{group:<{gw}}  {name:<{aw}}  {shown:>15}  {f'{len(reached)}/{len(per_seed)}':>7}"
    for g in refs:
      red = reductions(per_seed, times[(g, reference)])
      cell = f"{_stat(list(red.values()), 100, 1, '%')} ({len(red)})" if red else "-"
      line += f"  {cell:>19}"
    lines.append(line)
    never = sorted(s for s, t in per_seed.items() if not math.isfinite(t))
    if never and reached:
      notes.append(f"{group}, {name}: seed {', '.join(map(str, never))} never reached {target:.0%}")
  lines.append("")
  lines += textwrap.wrap(
    f"time to {target:.0%}: simulated time of the first evaluation at or above it, mean +- std "
    "over the seeds that reached it. vs <group>: the reduction 1 - T / T_ref per seed (T_ref: "
    f"the same seed of {reference} in that synchronous group), mean +- std over the seeds "
    "where both reached it (how many in parentheses).",
    width=100,
  )
  missing = [g for (g, a) in times if a == reference and g.startswith("sync") and g not in refs]
  lines += [
    f"{reference} in {g} never reached {target:.0%}: no reduction against it" for g in missing
  ]
  return "\n".join(lines + notes)


def plot(metric_rows: list[dict], schedule: dict, target: float, path: str) -> None:
  """Test accuracy vs simulated time of every (group, algorithm), mean over seeds, +- std."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  curves: dict[str, dict[int, list[tuple[float, float, float]]]] = defaultdict(
    lambda: defaultdict(list)
  )
  for r in metric_rows:
    label = f"{r['algorithm']} ({group_name(r, schedule)})"
    curves[label][int(r["seed"])].append(
      (int(r["round"]), float(r["time"]), float(r["test_accuracy"]))
    )
  fig, ax = plt.subplots(figsize=(9, 5), constrained_layout=True)
  for label, per_seed in curves.items():
    arr = np.array([sorted(v) for v in per_seed.values()])  # [seeds, E, 3]
    x, mean, std = arr[..., 1].mean(0), 100 * arr[..., 2].mean(0), 100 * arr[..., 2].std(0)
    style = "-" if label.split(" (")[1].startswith("semi") else "--"
    (line,) = ax.plot(x, mean, style, label=label)
    if arr.shape[0] > 1:
      ax.fill_between(x, mean - std, mean + std, alpha=0.15, color=line.get_color())
  ax.axhline(100 * target, color="gray", linewidth=0.8, linestyle=":")
  ax.set_xscale("log")
  ax.set_xlabel("simulated time (log scale)")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(f"accuracy vs simulated time (mean over seeds; dotted: the {target:.0%} target)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  with io.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)


def _read_csv(path: str) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def main(argv):
  cli.check_no_arguments(argv)
  workdir = flags.FLAGS.workdir
  if not os.path.isdir(workdir):
    cli.fail(f"workdir={workdir!r} is invalid: not a folder")
  problem = io.manifest_problem(workdir, ("summary.csv", "metrics.csv", "config.json"))
  if problem:
    cli.fail(f"workdir={workdir!r} is invalid: {problem}")
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  summary = _read_csv(os.path.join(workdir, "summary.csv"))
  if not summary or "time_to_target" not in summary[0]:
    cli.fail(f"workdir={workdir!r} is invalid: summary.csv has no time_to_target column")
  target = float(config["target_accuracy"])
  print(table(summary, config["schedule"], target, flags.FLAGS.reference), file=sys.stdout)
  out = flags.FLAGS.out or os.path.join(workdir, PLOT)
  cli.check_writable_file("out", out)
  plot(_read_csv(os.path.join(workdir, "metrics.csv")), config["schedule"], target, out)
  print(f"wrote {out}", file=sys.stdout)


if __name__ == "__main__":
  define_flags()
  cli.run(main)

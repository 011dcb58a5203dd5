"""FedSQ's table of a finished run: best validation accuracy (BVA), rounds to BVA and final
accuracy, mean +- std over seeds, per data split (static sweep group) and method.

  python -m experiments.fedsq_table --workdir=runs/fedsq
"""

import csv
import os
import statistics
import sys

from absl import flags

from fedqs_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's folder.", required=True)


def _stat(values: list[float], scale: float, digits: int) -> str:
  mean = statistics.fmean(values) * scale
  std = statistics.pstdev(values) * scale
  return f"{mean:.{digits}f} +- {std:.{digits}f}"


def table(rows: list[dict]) -> str:
  """The FedSQ table of summary rows (one per algorithm, group and seed)."""
  groups = {}
  for r in rows:
    split = r.get("data.partition", "") + (
      f" {r['data.dirichlet_alpha']}" if r.get("data.partition") == "dirichlet" else ""
    )
    groups.setdefault((split, r["algorithm"]), []).append(r)
  width = max(len(a) for _, a in groups) + 2
  lines = [f"{'split':<16}{'method':<{width}}{'BVA':>16}{'rounds to BVA':>18}{'final acc':>16}"]
  for (split, name), rs in groups.items():
    bva = [float(r["best_accuracy"]) for r in rs]
    to_best = [float(r["rounds_to_best"]) for r in rs]
    final = [float(r["final_accuracy"]) for r in rs]
    lines.append(f"{split:<16}{name:<{width}}{_stat(bva, 100, 2):>16}"
                 f"{_stat(to_best, 1, 1):>18}{_stat(final, 100, 2):>16}")  # fmt: skip
  return "\n".join(lines)


def main(argv):
  cli.check_no_arguments(argv)
  path = os.path.join(_WORKDIR.value, "summary.csv")
  if not os.path.isfile(path):
    cli.fail(f"workdir={_WORKDIR.value!r} is invalid: it has no summary.csv (a finished run?)")
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows or "rounds_to_best" not in rows[0]:
    cli.fail(f"{path} has no rounds_to_best column: rerun with this version")
  print(table(rows), file=sys.stdout)


if __name__ == "__main__":
  cli.run(main)

"""FedSQ's table of a finished run: best validation accuracy (BVA), rounds to BVA and final
accuracy, mean +- std over seeds, per data split (static sweep group) and method.

  python -m experiments.fedsq_table --workdir=runs/fedsq
"""

import csv
import os
import sys

from absl import flags

from fedqs_jax import cli, io, report

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's folder.", required=True)


def main(argv):
  cli.check_no_arguments(argv)
  path = os.path.join(_WORKDIR.value, "summary.csv")
  if not os.path.isdir(_WORKDIR.value):
    cli.fail(f"workdir={_WORKDIR.value!r} is invalid: not a folder")
  problem = io.manifest_problem(_WORKDIR.value, ("summary.csv",))
  if problem:
    cli.fail(f"workdir={_WORKDIR.value!r} is invalid: {problem}")
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows or "rounds_to_best" not in rows[0]:
    cli.fail(f"{path} has no rounds_to_best column: rerun with this version")
  print(report.best_accuracy_table(rows), file=sys.stdout)


if __name__ == "__main__":
  cli.run(main)

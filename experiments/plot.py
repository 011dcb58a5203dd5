"""Plots of a finished run's CSV files: accuracy curves per algorithm, sensitivity maps.

  python -m experiments.plot --workdir=runs/sensitivity
  python -m experiments.plot --workdir=runs/sensitivity --x=a --y=m0 [--algorithm=fedqs_avg]
  python -m experiments.plot --compare=runs/a,runs/b --out=runs/a_vs_b.png

Writes `curves_<algorithm>.png` (one curve per sweep point, mean over seeds) and, for
every pair of swept hyperparameters (or the one given by --x/--y),
`sensitivity_<algorithm>_<x>_<y>.png`: a heatmap and lines of the final accuracy,
averaged over seeds and the other swept values. `--compare` draws the curves of several
runs in one figure, each labelled with its folder's name (e.g. one schedule per run), and
prints their results table (the one each run printed and holds in its report.md, a row
per run and point, one table per target accuracy), also written beside the figure as
markdown (`--out` with .md for .png).
Bad input (flags, a folder that is not a finished run, a truncated CSV file, --x without
--y) prints one line and exits 2 before anything is drawn; JAX is never imported. A
finished run is one whose `manifest.json` (written last) matches its files: a folder a
killed run left half-written, or a CSV changed since, is refused. Diverged curves are
dashed and labelled "(diverged@r)".
This file is intentionally short.
"""

import csv
import itertools
import json
import os

from absl import flags

from fedqs_jax import cli, io, report
from fedqs_jax.errors import ConfigError, check, check_text_file

_WORKDIR = flags.DEFINE_string("workdir", None, "A run's folder (summary.csv, metrics.csv).")
_COMPARE = flags.DEFINE_list("compare", None, "Several runs' folders, drawn in one figure.")
_OUT = flags.DEFINE_string("out", None, "The --compare figure's path.")
_X = flags.DEFINE_string("x", None, "Swept hyperparameter on the x axis (with --y).")
_Y = flags.DEFINE_string("y", None, "Swept hyperparameter on the y axis (with --x).")
_ALGORITHM = flags.DEFINE_string("algorithm", None, "Only this algorithm (default: each).")
_METRIC = flags.DEFINE_string("metric", "final_accuracy", "A summary.csv column.")

# The metrics.csv columns the curves need, and their types.
CURVE_COLUMNS = {"algorithm": str, "seed": int, "round": int, "time": float,
                 "test_accuracy": float}  # fmt: skip
NOUNS = {int: "an integer", float: "a number"}
RESULT_FILES = ("metrics.csv", "summary.csv")  # what a finished run's manifest must list


def read(path: str, columns: dict) -> list[dict]:
  """The rows of a run's CSV file, `columns` converted to their types; `ConfigError`
  naming the file (and line) if it is missing, not text, truncated or corrupt."""
  field = os.path.basename(path)
  check(os.path.isfile(path), field, path, "is missing: give a finished run's folder")
  check_text_file(field, path, "CSV file")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    missing = [c for c in columns if c not in header]
    check(not missing, field, path,
          f"has no column {', '.join(missing)}: not a finished run's file?")  # fmt: skip
    rows = []
    for row in reader:
      where = f"{path}, line {reader.line_num}"
      if None in row or None in row.values():  # csv's marks of too many or too few cells
        cells = sum(v is not None for k, v in row.items() if k is not None)
        cells += len(row.get(None, []))
        raise ConfigError(f"{where} has {cells} cells, not {len(header)}: the file is truncated "
                          "or corrupt")  # fmt: skip
      for column, kind in columns.items():
        try:
          row[column] = kind(row[column])
        except ValueError:
          raise ConfigError(
            f"{where}: {column}={row[column]!r} is not {NOUNS[kind]}: the file is corrupt"
          ) from None
      rows.append(row)
  check(bool(rows), field, path, "has no rows: not a finished run's file?")
  return rows


def curve_label(row: dict) -> str:
  """A curve's name, as in the run's own accuracy.png: its algorithm and sweep point."""
  return row["algorithm"] + (f"[{row['sweep']}]" if row.get("sweep") else "")


def diverged_rounds(summary: list[dict]) -> dict[str, int]:
  """{curve label: the first round any of its seeds diverged}, from summary.csv rows."""
  out: dict[str, int] = {}
  for r in summary:
    if (r.get("diverged_round") or "").strip().isdigit():
      when = int(r["diverged_round"])
      out[curve_label(r)] = min(when, out.get(curve_label(r), when))
  return out


def check_flags() -> None:
  """The flags that go together, before any file is read."""
  compare, workdir, x, y = _COMPARE.value, _WORKDIR.value, _X.value, _Y.value
  check(not (compare and workdir), "compare", ",".join(compare or []),
        "give --workdir (one run) or --compare (several), not both")  # fmt: skip
  if not (compare or workdir):
    raise ConfigError("give --workdir=<a finished run's folder> or --compare=<folders> --out=<png>")
  if compare:
    check(bool(_OUT.value), "compare", ",".join(compare), "needs --out=<figure.png>")
    for name, value in (("x", x), ("y", y), ("algorithm", _ALGORITHM.value)):
      check(value is None, name, value, "is for --workdir: --compare draws every curve")
    cli.check_writable_file("out", _OUT.value)
    check(os.path.splitext(_OUT.value)[1].lower() != ".md", "out", _OUT.value,
          "is the figure's path (.png): the table is written beside it as .md")  # fmt: skip
    cli.check_writable_file("out", table_path(_OUT.value))
    names = [run_name(folder) for folder in compare]
    twice = sorted({n for n in names if names.count(n) > 1})
    check(not twice, "compare", ",".join(compare),
          f"names two runs {', '.join(twice)}: their curves and rows would merge; "
          "give folders with distinct names")  # fmt: skip
  else:
    check(_OUT.value is None, "out", _OUT.value, "is for --compare (--workdir writes into it)")
  check((x is None) == (y is None), "x" if x is not None else "y", x if x is not None else y,
        "give --x and --y together (or neither: every pair of swept values)")  # fmt: skip
  check(x is None or x != y, "y", y, "must differ from --x")
  for folder in compare or [workdir]:
    field = "compare" if compare else "workdir"
    check(os.path.isdir(folder), field, folder, "is not a folder: give a finished run's folder")
    problem = io.manifest_problem(folder, RESULT_FILES)  # a complete, unaltered result set
    check(problem is None, field, folder, str(problem))


def run_name(folder: str) -> str:
  """What --compare calls a run: its folder's name."""
  return os.path.basename(os.path.normpath(folder))


def table_path(out: str) -> str:
  """Where --compare writes its table: beside the figure `out`, as .md."""
  return os.path.splitext(out)[0] + ".md"


def read_json(folder: str, name: str, key: str):
  """`key` of a run's JSON file `name`; `ConfigError` naming the file if it has none."""
  path = os.path.join(folder, name)
  check(os.path.isfile(path), name, path, "is missing: give a finished run's folder")
  check_text_file(name, path, "JSON file")
  try:
    with open(path) as f:
      return json.load(f)[key]
  except (ValueError, KeyError, TypeError):
    raise ConfigError(f"{path} has no {key}: not a finished run's file?") from None


def compare(folders: list[str], out: str) -> None:
  """The curves of `folders` in one figure `out`; their results table printed and written
  beside it (`table_path`). Every file is read before anything is drawn."""
  rows, tables, runs = [], {}, []  # tables: {target accuracy: summary rows, relabelled}
  for folder in folders:
    name = run_name(folder)
    target = read_json(folder, "config.json", "target_accuracy")
    check(isinstance(target, int | float), "config.json", os.path.join(folder, "config.json"),
          f"has target_accuracy={target!r}, not a number: the file is corrupt")  # fmt: skip
    runs.append(f"- {name}: `{folder}`, config hash "
                f"`{read_json(folder, io.MANIFEST, 'config_hash')}`")  # fmt: skip
    for r in read(os.path.join(folder, "metrics.csv"), CURVE_COLUMNS):
      rows.append({**r, "run": f"{name}: {curve_label(r)}"})
    summary = read(os.path.join(folder, "summary.csv"), report.SUMMARY_COLUMNS)
    tables.setdefault(target, []).extend({**r, "algorithm": f"{name}: {r['algorithm']}"}
                                         for r in summary)  # fmt: skip
  table = "\n\n".join(report.results_table(rs, target) for target, rs in tables.items())
  diverged = {k: v for rs in tables.values() for k, v in diverged_rounds(rs).items()}
  from fedqs_jax import plotting  # matplotlib: only for valid input

  plotting.accuracy_curves(rows, out, lambda r: r["run"], diverged)
  path = table_path(out)
  io.write_text(path, "\n\n".join([
    f"# {', '.join(run_name(f) for f in folders)}",
    "\n".join(runs),
    "Mean +- std over seeds (each run's summary.csv has every seed):",
    report.fenced(table),
    f"![{os.path.splitext(os.path.basename(out))[0]}]({os.path.basename(out)})",
  ]) + "\n")  # fmt: skip
  print(table)
  print(out)
  print(path)


def main(argv):
  cli.check_no_arguments(argv)
  check_flags()
  if _COMPARE.value:
    return compare(_COMPARE.value, _OUT.value)
  workdir, metric = _WORKDIR.value, _METRIC.value
  summary_path = os.path.join(workdir, "summary.csv")
  summary = read(summary_path, {"algorithm": str, "sweep": str})
  check(
    metric in summary[0],
    "metric",
    metric,
    f"is not a column of summary.csv{cli.did_you_mean(metric, list(summary[0]), '')}",
  )
  metrics = read(os.path.join(workdir, "metrics.csv"), CURVE_COLUMNS)
  algorithms = list(dict.fromkeys(r["algorithm"] for r in summary))
  if _ALGORITHM.value:
    check(_ALGORITHM.value in algorithms, "algorithm", _ALGORITHM.value,
          f"has no rows in summary.csv (algorithms: {', '.join(algorithms)})")  # fmt: skip
  figures = []  # (kind, algorithm, rows, x, y, path): every check before the first figure
  for name in [_ALGORITHM.value] if _ALGORITHM.value else algorithms:
    rows = [r for r in summary if r["algorithm"] == name]
    curves = [r for r in metrics if r["algorithm"] == name]
    figures.append(("curves", name, curves, None, None, f"curves_{name}.png"))
    swept = list(dict.fromkeys(
      part.split("=")[0] for r in rows for part in r["sweep"].split(",") if part))  # fmt: skip
    pairs = [(_X.value, _Y.value)] if _X.value else list(itertools.combinations(swept, 2))
    for x, y in pairs:
      for axis_name, axis in (("x", x), ("y", y)):
        check(axis in swept and axis in rows[0], axis_name, axis,
              f"{axis!r} is not swept for {name}; swept: {swept}")  # fmt: skip
      for i, r in enumerate(rows):  # the cells the map reads (rows that sweep both)
        for column in (x, y, metric) if r[x] != "" and r[y] != "" else ():
          try:
            float(r[column])
          except ValueError:
            raise ConfigError(f"{summary_path}, {name}'s row {i + 1}: {column}={r[column]!r} "
                              "is not a number") from None  # fmt: skip
      figures.append(("sensitivity", name, rows, x, y, f"sensitivity_{name}_{x}_{y}.png"))

  from fedqs_jax import plotting  # matplotlib: only for valid input

  for kind, _, rows, x, y, filename in figures:
    out = os.path.join(workdir, filename)
    if kind == "curves":
      plotting.accuracy_curves(rows, out, curve_label, diverged_rounds(summary))
    else:
      plotting.sensitivity(rows, x, y, out, metric)
    print(out)


if __name__ == "__main__":
  cli.run(main)  # bad input (flags too): one line, exit 2

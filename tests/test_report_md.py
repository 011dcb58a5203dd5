"""report.md: a run on one page, written with its result set and vouched for by its manifest,
its results table the console's byte for byte and its numbers summary.csv's; and the table
of `experiments.plot --compare`.

Three runs, shared: one through the CLI (a static group x a grid with a diverging point,
two seeds), one in-process killed while it replaces that run's files, and its resume.
"""

import contextlib
import csv
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fedqs_jax import io as io_lib
from fedqs_jax import report, run
from fedqs_jax import workdir as workdir_lib
from tests.common import ROOT, finish, start_cli, tiny_args, tiny_config

# A static group per buffer size, a grid point that diverges in round 1, two seeds.
CONFIG_FILE = """
from experiments.configs import default
from fedqs_jax import sweep


def get_config():
  return default.get_config()


def get_sweep():
  return sweep.axis("schedule.buffer_size", [2, 4])
"""
GRID = {"algorithms": "fedsgd", "sweep.local.lr": "0.1,1e30", "local.clip": 1e30, "num_seeds": 2}
# The run that replaces it: checkpointed every chunk, another target accuracy.
REPLACEMENT = {"engine.checkpoint_every": 1, "engine.eval_every": 10, "target_accuracy": 0.5}
# The writes of a result set from the new CSVs on (earlier ones find the state that the
# `replaced` fixture checks): a kill at each leaves new CSVs beside an old or no report.
LATE_WRITES = ("summary.csv", "accuracy.png", "report.md", io_lib.MANIFEST)


def blocks(markdown: str) -> dict[str, str]:
  """The fenced code blocks of `markdown`: {the heading above it (or its info string): text}."""
  out, heading = {}, ""
  for m in re.finditer(r"^(#+ [^\n]*)$|^(`{3,})(\w*)\n([\s\S]*?)\n\2$", markdown, re.M):
    if m.group(1):
      heading = m.group(1)
    else:
      out[m.group(3) or heading] = m.group(4)
  return out


def summary_rows(folder) -> list[dict]:
  """summary.csv's rows, the columns the results table reads converted to their types."""
  with open(folder / "summary.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  return [{**r, **{k: kind(r[k]) for k, kind in report.SUMMARY_COLUMNS.items()}} for r in rows]


def target(folder) -> float:
  return json.loads((folder / "config.json").read_text())["target_accuracy"]


def results(folder) -> str:
  """report.md's results table."""
  return blocks((folder / "report.md").read_text())["## Results"]


def consistent(folder) -> bool:
  """report.md's table is the one summary.csv gives, its schedule table schedule.json's."""
  return results(folder) == report.results_table(summary_rows(folder), target(folder))


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
  """The CLI run: (workdir, its command line, its stdout)."""
  folder = tmp_path_factory.mktemp("grid")
  config_file = folder / "config.py"
  config_file.write_text(CONFIG_FILE)
  workdir = folder / "run"
  args = [f"--config={config_file}", f"--workdir={workdir}", *tiny_args(**GRID)]
  out = finish(start_cli(*args))
  return workdir, [sys.executable, "-m", "experiments.main", *args], out


class Killed(Exception):
  """Stands for a kill while a file is written (its temporary file never renamed)."""


@contextlib.contextmanager
def killed_writing(name: str):
  """Every atomic write dies while writing `name`, after its bytes, before its rename."""
  real = io_lib.atomic_open

  @contextlib.contextmanager
  def dying(path, mode="w"):
    with real(path, mode) as f:
      yield f
      if os.path.basename(path) == name:
        raise Killed(name)

  with pytest.MonkeyPatch.context() as m:
    m.setattr(io_lib, "atomic_open", dying)
    with pytest.raises(Killed):
      yield


@pytest.fixture(scope="module")
def replaced(cli_run, tmp_path_factory):
  """A copy of the CLI run, replaced (--overwrite) by REPLACEMENT, killed while writing
  report.md: its new CSVs and checkpoints written, the old run's report.md still there."""
  workdir = tmp_path_factory.mktemp("replaced") / "run"
  shutil.copytree(cli_run[0], workdir)
  with killed_writing("report.md"):
    run.run(tiny_config(**REPLACEMENT), str(workdir), stream=io.StringIO(), overwrite=True)
  return workdir


@pytest.fixture(scope="module")
def resumed(replaced, tmp_path_factory):
  """`replaced` resumed to the end: (workdir, its stdout)."""
  workdir = tmp_path_factory.mktemp("resumed") / "run"
  shutil.copytree(replaced, workdir)
  out = io.StringIO()
  run.run(tiny_config(**REPLACEMENT), str(workdir), stream=out, resume=True,
          command="python -m experiments.main --resume 'a b'")  # fmt: skip
  return workdir, out.getvalue()


# ----------------------------------------------------------------------------- one run


def test_report_md_is_part_of_the_manifested_result_set(cli_run, tmp_path):
  workdir = cli_run[0]
  manifest = json.loads((workdir / io_lib.MANIFEST).read_text())
  assert set(manifest["files"]) == set(workdir_lib.RESULTS) and "report.md" in manifest["files"]
  assert manifest["files"]["report.md"] == io_lib.file_sha256(str(workdir / "report.md"))
  assert io_lib.manifest_problem(str(workdir), ["report.md"]) is None
  # An edited report.md is refused with the set, as an edited CSV is.
  edited = tmp_path / "edited"
  shutil.copytree(workdir, edited)
  (edited / "report.md").write_text((edited / "report.md").read_text() + "edited\n")
  assert "report.md differs" in io_lib.manifest_problem(str(edited))


def test_results_table_is_the_console_one_byte_for_byte(cli_run):
  workdir, _, printed = cli_run
  table = results(workdir)
  assert printed.endswith("\n" + table + "\n")  # the last thing the run printed
  assert table.startswith("algorithm ") and "rounds to 80%" in table.splitlines()[0]
  labels = [line.split()[0] for line in table.splitlines()[2:]]
  assert labels == [f"fedsgd[schedule.buffer_size={k},local.lr={lr}]"
                    for k in (2, 4) for lr in ("0.1", "1e+30")]  # fmt: skip
  # The one formatter, fed summary.csv as read back, gives the same bytes.
  assert consistent(workdir)


def test_report_numbers_are_summary_csv_numbers(cli_run):
  workdir = cli_run[0]
  rows = summary_rows(workdir)
  lines = results(workdir).splitlines()[2:]
  assert len(lines) == len({report.curve_label(r) for r in rows}) == 4
  for line in lines:
    label, *cells = line.split()
    seeds = [r for r in rows if report.curve_label(r) == label]
    assert len(seeds) == 2
    rounds = [r["diverged_round"] for r in seeds if r["diverged_round"]]
    if rounds:  # every seed diverged at the grid point of lr 1e30
      assert cells == [f"diverged@{min(int(r) for r in rounds)}", "-", "-", "-", "-"]
      continue
    final = [100 * r["final_accuracy"] for r in seeds]
    assert float(cells[0]) == pytest.approx(np.mean(final), abs=0.005)
    assert cells[1] == "+-" and float(cells[2]) == pytest.approx(np.std(final), abs=0.005)
    best = np.mean([100 * r["best_accuracy"] for r in seeds])
    assert float(cells[3]) == pytest.approx(best, abs=0.005)
    for value, key in ((cells[4], "rounds_to_target"), (cells[5], "time_to_target")):
      reached = [r[key] for r in seeds if math.isfinite(r[key])]
      assert value == "never" if not reached else float(value) == pytest.approx(np.mean(reached))
    oscillation = np.mean([100 * r["oscillation_std"] for r in seeds])
    assert float(cells[-1]) == pytest.approx(oscillation, abs=0.005)


def test_report_holds_the_command_config_hash_schedule_and_plots(cli_run):
  workdir, argv, _ = cli_run
  text = (workdir / "report.md").read_text()
  assert shlex.split(blocks(text)["sh"]) == argv
  manifest = json.loads((workdir / io_lib.MANIFEST).read_text())
  assert f"config hash: `{manifest['config_hash']}`" in text
  # The schedule table: schedule.json's numbers, a row per (group, seed).
  schedule = json.loads((workdir / "schedule.json").read_text())
  section = text[text.index("## Schedule") : text.index("## Results")]
  header, _, *lines = [line for line in section.splitlines() if line.startswith("|")]
  columns = [c.strip() for c in header.strip("|").split("|")]
  assert columns[:2] == ["group", "seed"]
  seen = set()
  for line in lines:
    group, seed, *cells = [c.strip() for c in line.strip("|").split("|")]
    stats = schedule[group][seed]
    assert set(stats) == set(columns[2:])
    for column, cell in zip(columns[2:], cells, strict=True):
      assert math.isclose(float(cell), stats[column], rel_tol=1e-5), (group, seed, column)
    seen.add((group, seed))
  assert seen == {(g, s) for g in schedule for s in schedule[g]} and len(seen) == 4
  # Every plot of the set embedded by its relative path, and nothing else.
  plots = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
  assert "![accuracy](accuracy.png)" in text
  assert plots == [n for n in manifest["files"] if n.endswith(".png")]
  assert all((workdir / p).is_file() for p in plots)


# ----------------------------------------------------------------------------- killed, resumed


def test_a_killed_write_never_leaves_a_vouched_report_that_disagrees(replaced, tmp_path):
  # The replacement died writing report.md: new CSVs beside the old run's report, whose
  # manifest is gone, so the set is refused.
  assert not consistent(replaced)
  problem = io_lib.manifest_problem(str(replaced))
  assert problem is not None and "has no manifest.json" in problem
  # A resume killed while writing a file of the set leaves it refused too, or whole.
  workdir = tmp_path / "run"
  shutil.copytree(replaced, workdir)
  for name in LATE_WRITES:
    with killed_writing(name):
      run.run(tiny_config(**REPLACEMENT), str(workdir), stream=io.StringIO(), resume=True)
    problem = io_lib.manifest_problem(str(workdir), ["report.md"])
    assert problem is not None or consistent(workdir), name
    assert not [p for p in os.listdir(workdir) if p.startswith(io_lib.TMP_PREFIX)]


def test_a_resumed_run_rewrites_its_report(resumed):
  workdir, printed = resumed
  assert io_lib.manifest_problem(str(workdir), ["report.md"]) is None
  assert consistent(workdir)
  text = (workdir / "report.md").read_text()
  assert printed.endswith("\n" + results(workdir) + "\n")
  assert "rounds to 50%" in results(workdir) and "fedavg " in results(workdir)
  assert blocks(text)["sh"] == "python -m experiments.main --resume 'a b'"
  assert "resumed: the run continued from its checkpoints" in text
  assert "| group |" not in text  # one group: no group column
  assert not (workdir / workdir_lib.CHECKPOINTS).exists()


# ----------------------------------------------------------------------------- plot --compare


def test_plot_compare_prints_and_writes_the_runs_results_tables(cli_run, resumed, tmp_path):
  runs = {"grid": cli_run[0], "resumed": resumed[0]}
  for name, folder in runs.items():  # distinct names: the folders' names label the rows
    shutil.copytree(folder, tmp_path / name)
  out = tmp_path / "both.png"
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.plot", f"--compare={tmp_path / 'grid'},"
     f"{tmp_path / 'resumed'}", f"--out={out}"],
    cwd=ROOT, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-2000:]
  table, printed_out, printed_md = proc.stdout.rsplit("\n", 3)[:3]
  assert (printed_out, printed_md) == (str(out), str(tmp_path / "both.md")) and out.is_file()
  # One table per target accuracy (80%, then 50%), each row a run's own row, relabelled.
  first, second = table.split("\n\n")
  assert "rounds to 80%" in first.splitlines()[0] and "rounds to 50%" in second.splitlines()[0]
  for name, part in (("grid", first), ("resumed", second)):
    own = [line.split() for line in results(runs[name]).splitlines()[2:]]
    assert [line.split() for line in part.splitlines()[2:]] == [[f"{name}:", *r] for r in own]
  markdown = (tmp_path / "both.md").read_text()
  assert list(blocks(markdown).values()) == [table]
  assert "![both](both.png)" in markdown
  # The table needs no JAX: plotting stays light.
  probe = "import sys, experiments.plot; assert 'jax' not in sys.modules"
  assert subprocess.run([sys.executable, "-c", probe], cwd=ROOT).returncode == 0

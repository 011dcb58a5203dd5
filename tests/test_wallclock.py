"""wallclock.py and experiments.wallclock_table: the three schedule groups run end to end
through the CLI, and the table's times and reductions are those of summary.csv."""

import csv
import math
import os
import re
import statistics
import subprocess
import sys

import pytest

from experiments import wallclock_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "wallclock.py")
ALGORITHMS = ("fedavg", "fedqs_sgd")  # two of the three: one compile fewer per group


def _python(*args, check=True):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
  out = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)  # fmt: skip
  if check:
    assert out.returncode == 0, out.stderr[-3000:]
  return out


def _read(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """The smoke variant run once through experiments.main, and its table printed."""
  workdir = str(tmp_path_factory.mktemp("wallclock") / "run")
  _python("experiments.main", f"--config={CONFIG}:smoke", f"--workdir={workdir}",
          f"--config.algorithms={','.join(ALGORITHMS)}")  # fmt: skip
  plot = os.path.join(workdir, "curves.png")
  table = _python("experiments.wallclock_table", f"--workdir={workdir}", f"--out={plot}").stdout
  return workdir, table, plot


def test_every_algorithm_runs_in_each_group(run):
  workdir, _, plot = run
  summary = _read(os.path.join(workdir, "summary.csv"))
  groups = [("sync", "0"), ("sync", "3"), ("semi_async", "0")]
  seen = {
    (r["schedule.protocol"], r["schedule.clients_per_round"], r["algorithm"]) for r in summary
  }
  assert seen == {(p, m, a) for p, m in groups for a in ALGORITHMS}
  assert len(summary) == len(groups) * len(ALGORITHMS) * 2  # 2 seeds
  assert os.path.getsize(plot) > 0


def test_sync_groups_dispatch_all_or_m_clients_per_round(run):
  """Sync with every client dispatches N per round, sync with M sampled M, semi_async K:
  per evaluation window, `dispatched` = clients per round x rounds in the window."""
  workdir, _, _ = run
  metrics = _read(os.path.join(workdir, "metrics.csv"))
  per_round = {("sync", "0"): 12, ("sync", "3"): 3, ("semi_async", "0"): 3}
  for r in metrics:
    key = (r["schedule.protocol"], r["schedule.clients_per_round"])
    window = int(r["engine.eval_every"])
    assert int(r["dispatched"]) == per_round[key] * window, r


def _cells(table):
  """{(group, algorithm): [cells]} of the printed table's rows."""
  out = {}
  for line in table.splitlines()[2:]:
    cells = re.split(r"\s{2,}", line.strip())
    if len(cells) >= 4 and cells[1] in ALGORITHMS:
      out[(cells[0], cells[1])] = cells[2:]
  return out


def _stat(values, scale=1.0, digits=1, unit=""):
  return (f"{statistics.fmean(values) * scale:.{digits}f}{unit} +- "
          f"{statistics.pstdev(values) * scale:.{digits}f}{unit}")  # fmt: skip


def test_table_matches_summary_csv(run):
  """Times to target and reductions vs sync FedAvg recomputed from summary.csv directly."""
  workdir, table, _ = run
  summary = _read(os.path.join(workdir, "summary.csv"))
  names = {
    ("sync", "0"): "sync, all N",
    ("sync", "3"): "sync, M=3",
    ("semi_async", "0"): "semi_async, K=3",
  }
  times = {}
  for r in summary:
    key = (names[(r["schedule.protocol"], r["schedule.clients_per_round"])], r["algorithm"])
    times.setdefault(key, {})[int(r["seed"])] = float(r["time_to_target"])
  refs = [
    g
    for g in ("sync, all N", "sync, M=3")
    if any(map(math.isfinite, times[(g, "fedavg")].values()))
  ]
  cells = _cells(table)
  assert set(cells) == set(times)
  compared = 0
  for key, per_seed in times.items():
    reached = [t for t in per_seed.values() if math.isfinite(t)]
    assert cells[key][0] == (_stat(reached) if reached else "never"), (key, table)
    assert cells[key][1] == f"{len(reached)}/{len(per_seed)}"
    for i, g in enumerate(refs):
      ref = times[(g, "fedavg")]
      red = [
        1 - t / ref[s] for s, t in per_seed.items() if math.isfinite(t) and math.isfinite(ref[s])
      ]
      want = f"{_stat(red, 100, 1, '%')} ({len(red)})" if red else "-"
      assert cells[key][2 + i] == want, (key, g, table)
      compared += bool(red)
  # The smoke's target is one that sync FedAvg and a semi-async curve reach: the reductions
  # above were numbers, not only dashes.
  assert refs and compared >= 2, table


def _row(group, algorithm, seed, time, diverged=""):
  protocol, m = group
  return {"schedule.protocol": protocol, "schedule.clients_per_round": m, "algorithm": algorithm,
          "seed": seed, "time_to_target": time, "diverged_round": diverged}  # fmt: skip


def test_never_reached_seeds_are_shown_not_averaged():
  schedule = {"protocol": "sync", "buffer_size": 10, "clients_per_round": 0}
  rows = [
    _row(("sync", "0"), "fedavg", 0, "100.0"),
    _row(("sync", "0"), "fedavg", 1, "200.0"),
    _row(("sync", "0"), "fedavg", 2, "nan"),
    _row(("semi_async", "0"), "fedqs_sgd", 0, "30.0"),
    _row(("semi_async", "0"), "fedqs_sgd", 1, "nan"),
    _row(("semi_async", "0"), "fedqs_sgd", 2, "10.0"),
    _row(("semi_async", "0"), "fedavg", 0, "40.0", diverged="7"),
    _row(("semi_async", "0"), "fedavg", 1, "nan"),
    _row(("semi_async", "0"), "fedavg", 2, "nan"),
  ]
  table = wallclock_table.table(rows, schedule, 0.8)
  cells = {(g, a): c for (g, a), c in ((k, v) for k, v in _cells(table).items())}
  assert cells[("sync, all N", "fedavg")][:2] == ["150.0 +- 50.0", "2/3"]
  assert cells[("semi_async, K=10", "fedqs_sgd")][:2] == ["20.0 +- 10.0", "2/3"]
  # Only seed 0 reached the target in both: 1 - 30 / 100.
  assert cells[("semi_async, K=10", "fedqs_sgd")][2] == "70.0% +- 0.0% (1)"
  # A diverged seed does not count as reaching the target.
  assert cells[("semi_async, K=10", "fedavg")][:3] == ["never", "0/3", "-"]
  assert "semi_async, K=10, fedqs_sgd: seed 1 never reached 80%" in table
  assert "sync, all N, fedavg: seed 2 never reached 80%" in table


def test_unfinished_workdir_is_refused(tmp_path):
  out = _python("experiments.wallclock_table", f"--workdir={tmp_path}", check=False)
  assert out.returncode == 2
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith("error: workdir="), out.stderr

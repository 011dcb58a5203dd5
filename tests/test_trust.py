"""Results that can be trusted: a workdir belongs to one run, a result set is whole or
refused, a checkpoint only resumes its own config, bad floats are refused up front,
divergence and empty training are shown as such.

The expensive runs are module fixtures shared by the tests (tiny configs, in-process);
the CLI is started only where an exit code or a second process is the point.
"""

import contextlib
import csv
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fedqs_jax import config as config_lib
from fedqs_jax import io as io_lib
from fedqs_jax import plotting, report, run
from fedqs_jax import workdir as workdir_lib
from fedqs_jax.errors import ConfigError
from tests.common import ROOT, start_cli, tiny_args, tiny_config

# One point of the sweep diverges in round 1 (test_sweep's diverging point).
DIVERGING = {"sweep.local.lr": "0.1,1e30", "local.clip": 1e30, "algorithms": "fedsgd"}
# 63 of 100 clients hold no example: with K = 1 most rounds train nothing.
EMPTY = {"data.num_clients": 100, "data.dirichlet_alpha": 0.01, "schedule.buffer_size": 1,
         "engine.eval_every": 1}  # fmt: skip
# Two algorithms, checkpointed every chunk (4 chunks each).
CHECKPOINTED = {"algorithms": "fedavg,fedbuff", "engine.checkpoint_every": 1}


@contextlib.contextmanager
def umask(mask):
  old = os.umask(mask)
  try:
    yield
  finally:
    os.umask(old)


def read_csv(path) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished run (a sweep with a diverging point), written under umask 022."""
  workdir = tmp_path_factory.mktemp("finished")
  out = io.StringIO()
  with umask(0o022):
    result = run.run(tiny_config(**DIVERGING), str(workdir), stream=out)
  return workdir, result, out.getvalue()


class Interrupted(Exception):
  """Stands for a kill right after a checkpoint was saved."""


def interrupted_run(monkeypatch, config, workdir, label, chunk):
  """Runs `config` into `workdir` until `label`'s chunk `chunk` is checkpointed."""
  update = report.Progress.update

  def update_then_die(self, name, rounds, c, n):
    update(self, name, rounds, c, n)
    if (name, c) == (label, chunk):
      raise Interrupted

  with monkeypatch.context() as m:
    m.setattr(report.Progress, "update", update_then_die)
    with pytest.raises(Interrupted):
      run.run(config, str(workdir), stream=io.StringIO())


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
  """A run of fedavg and fedbuff killed after fedbuff's 2nd of 4 checkpoints (fedavg
  is whole), and a run of another config (local.lr) killed after fedbuff's 2nd too."""
  monkeypatch = pytest.MonkeyPatch()
  workdir = tmp_path_factory.mktemp("killed")
  interrupted_run(monkeypatch, tiny_config(**CHECKPOINTED), workdir, "fedbuff", 2)
  other = tmp_path_factory.mktemp("other")
  config = tiny_config(**{**CHECKPOINTED, "algorithms": "fedbuff", "local.lr": 0.2})
  interrupted_run(monkeypatch, config, other, "fedbuff", 2)
  return workdir, other


def plot(*args) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, "-m", "experiments.plot", *args],
    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
  )  # fmt: skip


# ----------------------------------------------------------------------------- one run


def test_a_second_run_into_a_busy_workdir_exits_2_naming_the_first(tmp_path):
  workdir = tmp_path / "busy"
  workdir.mkdir()  # an existing workdir is locked before anything loads
  long = tiny_args(**{"schedule.num_rounds": 100000, "engine.eval_every": 100})
  first = start_cli(f"--workdir={workdir}", *long)
  try:
    deadline = time.time() + 240
    while not (workdir / workdir_lib.LOCK).exists() or not (workdir / workdir_lib.LOCK).read_text():
      assert first.poll() is None, first.communicate()[1][-2000:]
      assert time.time() < deadline
      time.sleep(0.05)
    second = start_cli(f"--workdir={workdir}", *tiny_args())
    _, err = second.communicate(timeout=240)
    assert second.returncode == 2, err[-2000:]
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err[-2000:]
    assert f"pid {first.pid} " in err and "another run is using it" in err
    assert first.poll() is None  # the first goes on
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  # The OS released the killed run's lock: no stale lock.
  io_lib.FolderLock(str(workdir / workdir_lib.LOCK)).acquire().release()


@pytest.fixture(scope="module")
def overwritten(finished, tmp_path_factory):
  """A copy of `finished` overwritten by the EMPTY config, with a stale `.tmp-` file of a
  killed writer in it beforehand."""
  workdir = tmp_path_factory.mktemp("overwritten") / "run"
  shutil.copytree(finished[0], workdir)
  (workdir / ".tmp-k1ll3dmetrics.csv").write_text("half a fi")
  out = io.StringIO()
  result = run.run(tiny_config(**EMPTY), str(workdir), stream=out, overwrite=True)
  return workdir, result, out.getvalue()


def test_a_used_workdir_is_refused_without_overwrite(finished, overwritten):
  workdir = finished[0]

  def files():
    return {p.name: p.read_bytes() for p in workdir.iterdir() if p.name != workdir_lib.LOCK}

  before = files()
  with pytest.raises(ConfigError, match="--overwrite") as info:
    run.run(tiny_config(), str(workdir), stream=io.StringIO())
  for name in ("config.json", "metrics.csv", "summary.csv", "manifest.json"):
    assert name in str(info.value)
  assert files() == before  # untouched
  with pytest.raises(ConfigError, match="not both"):
    run.run(tiny_config(), str(workdir), resume=True, overwrite=True)

  # With --overwrite: the new config's result set, whole; the killed writer's file gone.
  copy = overwritten[0]
  manifest = json.loads((copy / "manifest.json").read_text())
  assert manifest["config_hash"] == workdir_lib.config_hash(tiny_config(**EMPTY))
  assert io_lib.manifest_problem(str(copy)) is None
  assert json.loads((copy / "config.json").read_text())["data"]["num_clients"] == 100
  assert not [p.name for p in copy.iterdir() if p.name.startswith(".tmp-")]


def test_result_files_honour_the_umask(finished):
  workdir = finished[0]
  for name in (*workdir_lib.RESULTS, "manifest.json"):
    assert os.stat(workdir / name).st_mode & 0o777 == 0o644, name
  with umask(0o077):
    io_lib.write_json(str(workdir / "private.json"), {})
  assert os.stat(workdir / "private.json").st_mode & 0o777 == 0o600


def test_plot_refuses_a_result_set_that_is_not_whole(finished, tmp_path):
  edited, unfinished = tmp_path / "edited", tmp_path / "unfinished"
  for folder in (edited, unfinished):
    shutil.copytree(finished[0], folder)
  rows = read_csv(edited / "metrics.csv")  # a killed rerun's new metrics.csv...
  rows[-1]["test_accuracy"] = "0.99"
  io_lib.write_csv(str(edited / "metrics.csv"), rows)
  (unfinished / "manifest.json").unlink()  # ... or a rerun killed before its manifest
  procs = {folder.name: plot(f"--workdir={folder}") for folder in (edited, unfinished)}
  procs["whole"] = plot(f"--workdir={finished[0]}", "--algorithm=fedsgd")
  outs = {name: (p.wait(timeout=300), p.communicate()[1]) for name, p in procs.items()}
  assert outs["whole"][0] == 0, outs["whole"][1][-2000:]
  for name, words in (("edited", ["metrics.csv differs", "manifest.json"]),
                      ("unfinished", ["has no manifest.json"])):  # fmt: skip
    code, err = outs[name]
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: workdir="), err
    assert all(word in lines[0] for word in words), lines[0]
  assert not (edited / "curves_fedsgd.png").exists()


# ----------------------------------------------------------------------------- checkpoints


def test_a_checkpoint_of_another_config_is_refused_on_resume(killed, tmp_path):
  workdir = tmp_path / "mixed"
  shutil.copytree(killed[0], workdir)
  # fedbuff's checkpoint of the other run (local.lr=0.2) lands in this run's folder.
  shutil.rmtree(workdir / "checkpoints" / "fedbuff")
  shutil.copytree(killed[1] / "checkpoints" / "fedbuff", workdir / "checkpoints" / "fedbuff")
  with pytest.raises(ConfigError, match="belongs to another run") as info:
    run.run(tiny_config(**CHECKPOINTED), str(workdir), stream=io.StringIO(), resume=True)
  assert "checkpoints/fedbuff/2" in str(info.value) and "config_hash" in str(info.value)
  assert not (workdir / "metrics.csv").exists()


def test_a_resumed_run_counts_its_restored_rounds(killed, tmp_path):
  workdir = tmp_path / "resumed"
  shutil.copytree(killed[0], workdir)
  out = io.StringIO()
  run.run(tiny_config(**CHECKPOINTED), str(workdir), stream=out, resume=True)
  lines = [line for line in out.getvalue().splitlines() if line.startswith("[")]
  assert "[fedavg] restored 4/4 chunks" in lines[0] and "| 20/40 rounds" in lines[0]
  assert "[fedbuff] restored 2/4 chunks" in lines[1] and "| 30/40 rounds" in lines[1]
  assert "[fedbuff] chunk 4/4 | 40/40 rounds" in lines[-1]
  assert io_lib.manifest_problem(str(workdir)) is None


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
  "overrides,field,words",
  [
    ({"local.lr": math.inf}, "local.lr", "finite"),
    ({"local.lr": math.nan}, "local.lr", "finite"),
    ({"local.lr": 1e-50}, "local.lr", "is 0 in float32"),
    ({"local.clip": 1e39}, "local.clip", "overflows float32"),
    ({"fedbuff.server_lr": 1e-40, "algorithms": "fedbuff"}, "fedbuff.server_lr", "is 0 in"),
    ({"sweep.local.lr": "0.1,inf"}, "sweep.local.lr", "finite"),
    ({"sweep.local.lr": "0.1,1e-50"}, "sweep.local.lr", "is 0 in float32"),
    ({"time.latencies": (3.0,) * 11 + (1e-50,)}, "time.latencies", "is 0 in float32"),
  ],
)
def test_non_finite_and_underflowing_floats_are_refused(overrides, field, words):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as info:
    config_lib.validate(tiny_config(**overrides))
  assert words in str(info.value)


def test_float32_representable_floats_pass():
  config_lib.validate(tiny_config(**{"local.lr": 1e-30, "local.momentum": 0.0,
                                     "sweep.local.lr": "1e-3,1e30"}))  # fmt: skip


def test_a_diverged_point_is_marked_not_ranked(finished, monkeypatch, tmp_path):
  workdir, result, printed = finished
  table = printed[printed.index("algorithm ") :].splitlines()
  diverged = [line for line in table if "local.lr=1e+30" in line]
  assert len(diverged) == 1 and "diverged@1" in diverged[0], table
  assert not any(c.isdigit() for c in diverged[0].split("@1")[1])  # no frozen accuracy
  (fine,) = [line for line in table if "local.lr=0.1]" in line]
  assert "diverged" not in fine
  # summary.csv keeps the frozen numbers, with the round.
  rows = {r["local.lr"]: r for r in read_csv(workdir / "summary.csv")}
  assert rows["1e+30"]["diverged_round"] == "1" and float(rows["1e+30"]["final_accuracy"]) >= 0
  # The curve is dashed and labelled.
  figures = []
  monkeypatch.setattr(plotting.plt, "close", figures.append)
  plotting.accuracy_curves(result["metrics"], str(tmp_path / "a.png"), report.curve_label,
                           report.diverged_rounds(result["summary"]))  # fmt: skip
  lines = {line.get_label(): line.get_linestyle() for line in figures[0].axes[0].get_lines()}
  assert lines == {"fedsgd[local.lr=0.1]": "-", "fedsgd[local.lr=1e+30] (diverged@1)": "--"}


def test_rounds_that_train_nothing_report_nan_and_empty_clients_are_warned(overwritten):
  _, result, printed = overwritten
  warnings = [line for line in printed.splitlines() if line.startswith("warning:")]
  assert warnings == [
    "warning: 63 of 100 clients hold no training examples: their tasks train nothing "
    "(a round that dispatches only them has train_loss NaN)"
  ]
  rows = result["metrics"]  # one row per round (eval_every 1)
  idle = [r for r in rows if r["client_steps"] == 0]
  busy = [r for r in rows if r["client_steps"] > 0]
  assert idle and busy
  assert all(np.isnan(r["train_loss"]) for r in idle)
  assert all(np.isfinite(r["train_loss"]) and r["train_loss"] > 0 for r in busy)
  assert not any(r["diverged"] for r in rows)  # NaN is reported, not a divergence

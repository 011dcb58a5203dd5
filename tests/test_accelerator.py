"""benchmarks/accelerator.py: every section lands in the JSON report, with consistent numbers,
under a budget; a mode that raises is recorded and the others go on; bad input is one line.

The run here is tiny (the MLP workload, two modes, G = 1 and 2, two fast tests) and inline
(no workload subprocesses); the full `--cpu-smoke` run (about two minutes) is not part of
the suite.
"""

import json
import os
import subprocess
import sys

import pytest

from fedqs_jax import engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import accelerator  # noqa: E402

TESTS = "tests/test_fedqs.py::test_class_spread,tests/test_fedqs.py::test_thresholds"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  out = tmp_path_factory.mktemp("acc") / "report.json"
  argv = ["--cpu-smoke", "--inline", "--workloads=mlp", "--grid_sizes=1,2", f"--tests={TESTS}",
          "--modes=vmap/scan/while,bogus/scan/while,map/scan/while", "--budget_s=600",
          f"--out={out}"]  # fmt: skip
  assert accelerator.main(argv) == 0
  with open(out) as f:
    return json.load(f)


def test_every_section_is_in_the_report(report):
  for name in accelerator.SECTIONS:
    assert name in report, name
  dev = report["devices"]
  assert dev["device_count"] >= 1 and dev["devices"][0]["platform"] == "cpu"
  assert dev["versions"]["jax"] and dev["versions"]["flax"] != "?"
  assert set(report["timings"]) >= {"devices", "tests", "engine mlp", "grid"}


def test_tests_section_counts_every_node_id(report):
  t = report["tests"]
  assert t["returncode"] == 0
  assert set(t["results"]) == set(TESTS.split(","))
  assert t["counts"]["passed"] == 2 and sum(t["counts"].values()) == len(t["results"])
  assert t["not_run"] == []


def test_engine_modes_are_measured_and_a_raising_mode_is_recorded(report):
  mlp = report["engine"]["mlp"]
  modes = mlp["modes"]
  assert list(modes) == ["vmap/scan/while", "bogus/scan/while", "map/scan/while"]
  assert modes["bogus/scan/while"]["status"] == "error"
  assert "bogus" in modes["bogus/scan/while"]["error"]
  for name in ("vmap/scan/while", "map/scan/while"):
    m = modes[name]
    assert m["status"] == "ok", m
    # Real steps are a subset of the executed step slots; rates agree with the counts.
    assert 0 < m["client_steps"] <= m["executed_steps"]
    assert m["useful_fraction"] == pytest.approx(m["client_steps"] / m["executed_steps"])
    assert m["rounds_per_s"] == pytest.approx(m["rounds"] / m["seconds"])
    assert m["steps_per_s"] == pytest.approx(m["client_steps"] / m["seconds"])
    assert m["rounds"] == report["sizes"]["mlp"]["chunk"] * report["sizes"]["mlp"]["chunks"]
  # Lockstep clients run the longest one's steps: vmap executes at least what map does.
  assert modes["vmap/scan/while"]["executed_steps"] >= modes["map/scan/while"]["executed_steps"]
  # Both modes train the same tasks: the same real steps.
  assert modes["vmap/scan/while"]["client_steps"] == modes["map/scan/while"]["client_steps"]
  assert mlp["best"] in ("vmap/scan/while", "map/scan/while")
  b = mlp["build"]
  assert b["clients"] == 100 and b["estimate"]["per_device"] > 0


def test_grid_rows_and_amortisation(report):
  rows = report["grid"]["rows"]
  assert set(rows) == {"1", "2"}
  one, two = rows["1"], rows["2"]
  assert one["status"] == two["status"] == "ok"
  assert (one["points"], two["points"]) == (1, 2)
  # One seed: every point does the solo run's work.
  assert two["client_steps"] == 2 * one["client_steps"]
  assert two["point_round_s"] == pytest.approx(two["round_s"] / 2)
  assert two["amortisation"] == pytest.approx(2 * one["round_s"] / two["round_s"])
  assert two["estimate"]["points"] == 2
  assert two["estimate"]["grid"] == pytest.approx(2 * one["estimate"]["grid"], rel=0.01)


def test_memory_rows_and_extrapolation(report):
  runs = [r["run"] for r in report["memory"]["rows"]]
  assert "mlp init" in runs and "mlp vmap/scan/while" in runs and "grid G=2" in runs
  for r in report["memory"]["rows"]:
    assert r["estimate"] > 0
    assert r["peak_bytes_in_use"] is None  # CPU devices report no memory stats
    assert r["host_VmHWM"] >= r["host_VmRSS"] > 0
  assert report["extrapolation"]["status"] == "skipped"  # no ResNet-18 here
  # The extrapolation's arithmetic, on the MLP's measurements standing in for ResNet-18's.
  ex = accelerator.extrapolation({"resnet18": report["engine"]["mlp"]})
  m = report["engine"]["mlp"]["modes"][ex["mode"]]
  assert ex["train_s"] == pytest.approx(accelerator.PAPER_ROUNDS / m["rounds_per_s"])
  init = report["engine"]["mlp"]["build"]["init_s"]
  assert ex["total_s"] == pytest.approx(ex["train_s"] + max(m["compile_s"], 0) + init)
  assert "vmap/scan/while" in accelerator.report_tables(report)


def test_every_engine_mode_value_is_measured(monkeypatch):
  monkeypatch.setattr(engine, "CLIENT_MODES", (*engine.CLIENT_MODES, "new_mode"))
  names = [accelerator.mode_name(m) for m in accelerator.engine_modes()]
  for value in engine.CLIENT_MODES:
    assert f"{value}/scan/while" in names
  for value in engine.ROUND_MODES:
    assert f"vmap/{value}/while" in names
  for value in engine.LOCAL_LOOPS:
    assert f"vmap/scan/{value}" in names
  assert len(names) == len(set(names))
  assert "new_mode/scan/while" in names
  unrolled = ["unroll" in n.split("/")[:2] for n in names]
  assert unrolled == sorted(unrolled)  # the modes that unroll come last


def test_tiny_budget_skips_the_work_but_writes_every_section(tmp_path):
  out = tmp_path / "r.json"
  assert accelerator.main(["--budget_s=1", "--inline", f"--out={out}"]) == 0
  report = json.loads(out.read_text())
  for name in ("devices", "tests", "grid"):
    assert report[name]["status"] == "skipped" and "budget" in report[name]["reason"]
  assert all(r["status"] == "skipped" for r in report["engine"].values())
  assert report["extrapolation"]["status"] == "skipped"


def test_budget_trims_rounds_and_the_largest_grids():
  full = accelerator.trimmed_sizes(False, 300, [1, 16, 64, 256])
  half = accelerator.trimmed_sizes(False, 120, [1, 16, 64, 256])
  assert full["grid"]["sizes"] == [1, 16, 64, 256]
  assert half["grid"]["sizes"] == [1, 16, 64] and half["grid"]["dropped"] == [256]
  for name in ("mlp", "cnn", "resnet18"):
    assert 1 <= half[name]["chunks"] <= full[name]["chunks"]


@pytest.mark.parametrize(
  "flag,field", [("--budget_s=0", "--budget_s"), ("--workloads=vgg", "--workloads")]
)
def test_bad_input_is_one_line_and_exit_2(flag, field):
  proc = subprocess.run(
    [sys.executable, os.path.join(ROOT, "benchmarks", "accelerator.py"), flag],
    cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and field in lines[0], proc.stderr

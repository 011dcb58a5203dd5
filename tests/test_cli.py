"""The command line: a shrunk default run writes every output; bad input exits 2."""

import csv
import json
import os
import subprocess
import sys

import pytest

from fedqs_jax import config as config_lib
from fedqs_jax.errors import ConfigError
from tests.common import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHRINK = [
  "--config.data.num_clients=12",
  "--config.model.hidden=(8,)",
  "--config.schedule.num_rounds=20",
  "--config.schedule.buffer_size=4",
  "--config.engine.eval_every=5",
  "--config.local.epochs=1",
]


def cli(*args, timeout=300):
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1", JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "experiments.main", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_shrunk_default_run_writes_all_outputs(tmp_path):
  workdir = tmp_path / "run"
  proc = cli(f"--workdir={workdir}", *SHRINK)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "ETA" in proc.stdout
  assert "final acc" in proc.stdout
  for name in ("config.json", "schedule.json", "metrics.csv", "summary.csv", "accuracy.png"):
    assert (workdir / name).stat().st_size > 0, name
  config = json.loads((workdir / "config.json").read_text())
  assert config["schedule"]["num_rounds"] == 20
  algos = config["algorithms"].split(",")
  with open(workdir / "metrics.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(algos) * 4  # 20 rounds / eval_every 5
  assert {r["algorithm"] for r in rows} == set(algos)
  for r in rows:
    assert 0.0 <= float(r["test_accuracy"]) <= 1.0
    assert float(r["staleness_max"]) >= float(r["staleness_mean"]) >= 0
  times = [float(r["time"]) for r in rows if r["algorithm"] == algos[0]]
  assert times == sorted(times)
  with open(workdir / "summary.csv") as f:
    summary = list(csv.DictReader(f))
  assert [r["algorithm"] for r in summary] == algos
  assert (workdir / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not [p for p in os.listdir(workdir) if p.startswith(".tmp-")]


def write_csv(path, rows):
  path.write_text("\n".join(",".join(str(v) for v in row) for row in rows) + "\n")
  return str(path)


BAD = [
  ({"schedule.buffer_size": 0}, "schedule.buffer_size"),
  ({"schedule.buffer_size": 13}, "schedule.buffer_size"),
  ({"schedule.protocol": "sync", "schedule.clients_per_round": 13}, "schedule.clients_per_round"),
  ({"data.num_clients": 0}, "data.num_clients"),
  ({"time.latencies": (3,) * 11 + (0,)}, "time.latencies"),
  ({"time.latencies": (3,) * 11 + (-2,)}, "time.latencies"),
  ({"time.latencies": (3,) * 5}, "time.latencies"),
  ({"time.speed_ratio": 0}, "time.speed_ratio"),
  ({"time.distribution": "lognormal", "time.sigma": 0.0}, "time.sigma"),
  ({"time.distribution": "weibull"}, "time.distribution"),
  ({"algorithms": "fedavg,fedmagic"}, "algorithms"),
  ({"algorithms": ""}, "algorithms"),
  ({"data.name": "imagenet"}, "data.name"),
  ({"model.name": "transformer"}, "model.name"),
  ({"model.name": "cnn", "data.name": "synthetic"}, "model.name"),
  ({"schedule.protocol": "gossip"}, "schedule.protocol"),
  ({"data.dirichlet_alpha": 0.0}, "data.dirichlet_alpha"),
  ({"data.dirichlet_alpha": -1.0}, "data.dirichlet_alpha"),
  ({"local.batch_size": 0}, "local.batch_size"),
  ({"local.lr": 0.0}, "local.lr"),
  ({"schedule.num_rounds": 0}, "schedule.num_rounds"),
  ({"engine.eval_every": 3}, "engine.eval_every"),
  ({"engine.client_mode": "pmap"}, "engine.client_mode"),
  ({"schedule.protocol": "tick", "time.distribution": "exponential"}, "time.distribution"),
  ({"fedasync.staleness": "linear", "algorithms": "fedasync"}, "fedasync.staleness"),
  ({"algorithms": "fedqs_sgd"}, "data.validation_fraction"),
  (
    {"algorithms": "fedqs_avg", "data.validation_fraction": 0.2, "fedqs.similarity": "l3"},
    "fedqs.similarity",
  ),
  (
    {"algorithms": "fedqs_sgd", "data.validation_fraction": 0.2, "fedqs.lr_min": 0.5},
    "fedqs.lr_min",
  ),
]


@pytest.mark.parametrize("overrides,field", BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_bad_config_names_the_field(overrides, field):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as info:
    config_lib.validate(tiny_config(**overrides), workdir=None)
  assert "invalid" in str(info.value) or "missing" in str(info.value)


def test_bad_latency_files(tmp_path):
  short = write_csv(tmp_path / "short.csv", [[5] * 20, [5] * 11])  # last row has 11 < 12
  with pytest.raises(ConfigError, match=r"at least data.num_clients=12 values, found 11"):
    config_lib.validate(tiny_config(**{"time.latency_file": short}))
  floats = write_csv(tmp_path / "floats.csv", [[1.5] * 12])
  with pytest.raises(ConfigError, match="must hold integers"):
    config_lib.validate(tiny_config(**{"time.latency_file": floats}))
  zero = write_csv(tmp_path / "zero.csv", [[0] + [4] * 11])
  with pytest.raises(ConfigError, match="positive"):
    config_lib.validate(tiny_config(**{"time.latency_file": zero}))
  with pytest.raises(ConfigError, match="existing CSV file"):
    config_lib.validate(tiny_config(**{"time.latency_file": str(tmp_path / "none.csv")}))
  good = write_csv(tmp_path / "good.csv", [[9] * 3, list(range(1, 15))])
  config_lib.validate(tiny_config(**{"time.latency_file": good}))
  latencies = config_lib.load_latencies(tiny_config(**{"time.latency_file": good}).time, 12)
  assert latencies.tolist() == list(range(1, 13))  # last row, first N values


def test_cli_bad_input_exits_2_and_leaves_the_workdir_alone(tmp_path):
  workdir = tmp_path / "old_run"
  workdir.mkdir()
  (workdir / "metrics.csv").write_text("precious\n")
  proc = cli(f"--workdir={workdir}", "--config.schedule.buffer_size=0", *SHRINK[:1])
  assert proc.returncode == 2
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "schedule.buffer_size" in errors[0]
  assert sorted(os.listdir(workdir)) == ["metrics.csv"]
  assert (workdir / "metrics.csv").read_text() == "precious\n"

  afile = tmp_path / "a_file"
  afile.write_text("keep")
  proc = cli(f"--workdir={afile}", *SHRINK)
  assert proc.returncode == 2
  assert "workdir" in proc.stderr and "not a folder" in proc.stderr
  assert afile.read_text() == "keep"

"""Two processes under `jax.distributed` on 127.0.0.1 give the one-process results."""

import csv
import os
import socket
import subprocess
import sys

import numpy as np

from fedqs_jax import run
from tests.common import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [
  "--config.data.num_clients=12",
  "--config.model.hidden=(8,)",
  "--config.schedule.num_rounds=20",
  "--config.schedule.buffer_size=4",
  "--config.engine.eval_every=5",
  "--config.local.epochs=1",
  "--config.algorithms=fedbuff",
  "--config.sweep.lr=0.05,0.1,0.2",  # 3 points over 2 devices: padded to 4
  "--config.data.dirichlet_alpha=0.5",
  "--config.time.speed_ratio=10",
]
# The same run in this process (tests.common.tiny_config is ARGS' shrunk default).
SAME = {"algorithms": "fedbuff", "sweep.lr": "0.05,0.1,0.2"}


def cli(*args) -> subprocess.Popen:
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1", JAX_PLATFORMS="cpu")
  return subprocess.Popen(
    [sys.executable, "-m", "experiments.main", *ARGS, *args],
    cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
  )  # fmt: skip


def finish(proc: subprocess.Popen) -> str:
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return out


def rows(path) -> list[dict]:
  with open(path) as f:
    return list(csv.DictReader(f))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
  address = f"127.0.0.1:{free_port()}"
  workdir = tmp_path / "two"
  procs = [
    cli(
      f"--workdir={workdir}",
      "--distributed",
      f"--coordinator_address={address}",
      "--num_processes=2",
      f"--process_id={i}",
    )  # fmt: skip
    for i in range(2)
  ]
  outs = [finish(p) for p in procs]
  # Process 0 alone reports and writes (gloo's own connection line goes to both).
  assert "final acc" in outs[0] and "final acc" not in outs[1] and "schedule:" not in outs[1]
  single = tmp_path / "one"
  run.run(tiny_config(**SAME), str(single))
  two, one = rows(workdir / "metrics.csv"), rows(single / "metrics.csv")
  assert len(two) == len(one) == 3 * 4  # 3 points x 4 evaluations, padding dropped
  for a, b in zip(two, one, strict=True):
    assert (a["sweep"], a["round"], a["client_steps"]) == (
      b["sweep"],
      b["round"],
      b["client_steps"],
    )
    np.testing.assert_allclose(float(a["test_loss"]), float(b["test_loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(a["train_loss"]), float(b["train_loss"]), rtol=1e-5)
  losses = {a["sweep"]: float(a["test_loss"]) for a in two if a["round"] == "20"}
  assert len(set(losses.values())) == 3  # the points really differ

"""Two processes under `jax.distributed` on 127.0.0.1 give the one-process results."""

import csv
import socket

import numpy as np

from fedqs_jax import run
from tests.common import finish, start_cli, tiny_args, tiny_config

SAME = {"algorithms": "fedbuff", "sweep.local.lr": "0.05,0.1,0.2"}  # 3 points over 2 devices: 4


def cli(*args):
  return start_cli(*tiny_args(**SAME), *args)


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

"""Long runs: a sweep killed by SIGKILL and resumed gives the uninterrupted run's numbers."""

import json
import signal
import time

import pytest

from fedqs_jax import run
from fedqs_jax.errors import ConfigError
from tests.common import finish, start_cli, tiny_args, tiny_config

# Two algorithms x two points, long enough to be killed half-way.
SAME = {"schedule.num_rounds": 200, "engine.eval_every": 10, "algorithms": "fedavg,fedbuff",
        "sweep.local.lr": "0.05,0.1"}  # fmt: skip


def cli(*args):
  return start_cli(*tiny_args(**SAME), *args)


def steps(folder) -> list[int]:
  return (
    sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []
  )


def test_killed_sweep_resumes_to_the_uninterrupted_numbers(tmp_path):
  reference = tmp_path / "reference"
  run.run(tiny_config(**SAME), str(reference))  # uninterrupted, no checkpoints at all

  workdir = tmp_path / "killed"
  proc = cli(f"--workdir={workdir}", "--config.engine.checkpoint_every=1")
  second = workdir / "checkpoints" / "fedbuff"
  deadline = time.time() + 300
  while not any(s >= 3 for s in steps(second)):  # fedavg done, fedbuff under way
    assert proc.poll() is None, "the run ended before it could be killed"
    assert time.time() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  # Nothing partial is visible: the results are not there yet, the rest is complete.
  assert sorted(p.name for p in workdir.iterdir()) == [
    ".lock",  # held by no one now: the OS released it with the killed process
    "checkpoints",
    "config.json",
    "schedule.json",
  ]
  json.loads((workdir / "config.json").read_text())
  json.loads((workdir / "schedule.json").read_text())
  assert steps(workdir / "checkpoints" / "fedavg") == [20]  # its final chunk

  # Without --resume the workdir is refused; a changed config is refused too.
  refused = cli(f"--workdir={workdir}", "--config.engine.checkpoint_every=1")
  assert refused.wait(timeout=300) == 2 and "--resume" in refused.stderr.read()
  changed = cli(f"--workdir={workdir}", "--config.engine.checkpoint_every=1", "--resume",
                "--config.local.lr=0.3")  # fmt: skip
  assert changed.wait(timeout=300) == 2 and "local.lr" in changed.stderr.read()

  finish(cli(f"--workdir={workdir}", "--config.engine.checkpoint_every=1", "--resume"))
  for name in ("metrics.csv", "summary.csv"):
    assert (workdir / name).read_text() == (reference / name).read_text(), name
  assert not (workdir / "checkpoints").exists()  # removed once the results are written


def test_checkpoint_every_is_validated():
  with pytest.raises(ConfigError, match="engine.checkpoint_every"):
    run.run(tiny_config(**{"engine.checkpoint_every": -1}), "/nonexistent/never-written")

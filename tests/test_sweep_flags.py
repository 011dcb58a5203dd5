"""Sweeps from flags: `--sweep=NAME=v1,v2` and `--zip=A,B` give the grid a config file's
`get_sweep()` gives, to the byte; bad flags are one line and exit 2 before anything compiles."""

import csv
import json
import os
import subprocess
import sys

import pytest

from fedqs_jax import cli, program, sweep
from fedqs_jax import config as config_lib
from fedqs_jax import data as data_lib
from fedqs_jax.errors import ConfigError
from tests.common import ROOT, SHRINK, tiny_config

# The runs: digits, 12 clients, 10 rounds, FedAvg on two protocols x two (lr, momentum) pairs
# (one algorithm: each costs a compile per group; several are counted in process below).
ARGS = [
  f"--config.{k}={v}"
  for k, v in {
    **SHRINK,
    "algorithms": "fedavg",
    "schedule.num_rounds": 10,
    "schedule.clients_per_round": 4,
  }.items()
]
FLAG_SWEEP = [
  "--sweep=schedule.protocol=sync,semi_async",
  "--sweep=local.lr=0.05,0.1",
  "--sweep=local.momentum=0,0.5",
  "--zip=local.lr,local.momentum",
]
FILE_SWEEP = """
from experiments.configs.default import get_config
from fedqs_jax import sweep


def get_sweep():
  return sweep.product(
    sweep.axis("schedule.protocol", ["sync", "semi_async"]),
    sweep.zip(sweep.axis("local.lr", [0.05, 0.1]), sweep.axis("local.momentum", [0.0, 0.5])),
  )
"""

# (id, flags, words the one error line must hold): a case of each check through the CLI
# (each subprocess costs seconds of imports); more cases in process below.
BAD = [
  ("unknown-name", ["--sweep=schedule.bufer_size=2,4"],
   ["--sweep=schedule.bufer_size=2,4", "did you mean schedule.buffer_size?"]),
  ("not-an-integer", ["--sweep=schedule.buffer_size=2,x"],
   ["schedule.buffer_size takes integers, got 'x'"]),
  ("static-out-of-range", ["--sweep=schedule.buffer_size=2,13"],
   ["sweep group schedule.buffer_size=13", "must be in [1, data.num_clients=12]"]),
  ("dynamic-out-of-range", ["--sweep=local.momentum=0.5,1"],
   ["local.momentum=1", "must be in [0, 1)"]),
  ("no-equals", ["--sweep=local.lr"], ["--sweep=local.lr is invalid", "--sweep=NAME=v1,v2"]),
  ("zip-lengths", ["--sweep=local.lr=0.1,0.2", "--sweep=local.momentum=0,0.5,0.9",
                   "--zip=local.lr,local.momentum"],
   ["equally many values", "local.lr has 2, local.momentum has 3"]),
  ("swept-twice", ["--config.sweep.local.lr=0.1,0.2", "--sweep=local.lr=0.3,0.4"],
   ["local.lr is swept by --config.sweep.local.lr already"]),
  ("config-sweep-static", ["--config.sweep.schedule.protocol=sync,semi_async"],
   ["config.sweep.schedule.protocol", "--sweep=schedule.protocol=sync,semi_async"]),
]  # fmt: skip


def _start(*args):
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1", JAX_PLATFORMS="cpu")
  return subprocess.Popen(
    [sys.executable, "-m", "experiments.main", *args],
    cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
  )  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The same sweep by flags and by a config file, and every BAD case, started at once:
  {name: (exit code, stdout, stderr, workdir)}."""
  folder = tmp_path_factory.mktemp("sweep_flags")
  config_file = folder / "swept.py"
  config_file.write_text(FILE_SWEEP)
  procs = {
    "flags": (_start(f"--workdir={folder / 'flags'}", *ARGS, *FLAG_SWEEP), folder / "flags"),
    "file": (
      _start(f"--workdir={folder / 'file'}", f"--config={config_file}", *ARGS),
      folder / "file",
    ),
  }
  for name, flags, _ in BAD:
    procs[name] = (_start(f"--workdir={folder / name}", *ARGS, *flags), folder / name)
  out = {}
  for name, (proc, workdir) in procs.items():
    stdout, stderr = proc.communicate(timeout=600)
    out[name] = (proc.returncode, stdout, stderr, workdir)
  return out


def test_a_static_and_zipped_sweep_from_flags_runs_and_prints_its_grid(runs):
  code, stdout, stderr, workdir = runs["flags"]
  assert code == 0, stderr[-3000:]
  head = stdout.splitlines()[:3]
  assert head == [
    "sweep: 2 static groups x 1 seed = 4 trained grid entries in 2 programs (one per group "
    "and algorithm)",
    "  schedule.protocol=sync: fedavg 2 points",
    "  schedule.protocol=semi_async: fedavg 2 points",
  ]
  memory_line = stdout.splitlines()[3]  # once the groups' programs are built, before training
  assert memory_line.startswith("memory: largest program fedavg[schedule.protocol="), memory_line
  assert "GiB per device (2 grid entries x " in memory_line
  with open(workdir / "summary.csv") as f:
    rows = list(csv.DictReader(f))
  assert sorted((r["schedule.protocol"], r["local.lr"], r["local.momentum"]) for r in rows) == [
    ("semi_async", "0.05", "0.0"), ("semi_async", "0.1", "0.5"),
    ("sync", "0.05", "0.0"), ("sync", "0.1", "0.5"),
  ]  # fmt: skip
  # The protocols really differ: a sync round aggregates its 4 clients at once.
  with open(workdir / "schedule.json") as f:
    schedules = json.load(f)
  assert set(schedules) == {"schedule.protocol=sync", "schedule.protocol=semi_async"}
  assert schedules["schedule.protocol=sync"] != schedules["schedule.protocol=semi_async"]


def test_the_same_sweep_by_flags_or_by_a_config_file_writes_the_same_files(runs):
  (code, _, stderr, flags_dir), (code2, _, stderr2, file_dir) = runs["flags"], runs["file"]
  assert code == 0 and code2 == 0, (stderr + stderr2)[-3000:]
  names = sorted(os.listdir(flags_dir))
  assert names == sorted(os.listdir(file_dir))
  compared = [n for n in names if n not in ("report.md", "manifest.json", ".lock")]
  assert {"config.json", "schedule.json", "metrics.csv", "summary.csv"} <= set(compared)
  for name in compared:
    assert (flags_dir / name).read_bytes() == (file_dir / name).read_bytes(), name
  manifests = [json.loads((d / "manifest.json").read_text()) for d in (flags_dir, file_dir)]
  for m in manifests:
    m["files"].pop("report.md", None)  # it records the command line
  assert manifests[0] == manifests[1]
  config = json.loads((flags_dir / "config.json").read_text())
  assert len(config["sweep_points"]) == 4


@pytest.mark.parametrize("name,words", [(b[0], b[2]) for b in BAD], ids=[b[0] for b in BAD])
def test_bad_sweep_flags_are_one_line_and_exit_2(runs, name, words):
  code, stdout, stderr, workdir = runs[name]
  assert code == 2, stderr[-3000:]
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
  for word in words:
    assert word in lines[0], lines[0]
  assert not workdir.exists()  # refused before anything was written


# ----------------------------------------------------------------------------- in process


def test_flag_axes_equal_the_file_sweeps_axes_and_values_take_the_fields_types():
  config = tiny_config()
  flags = ["schedule.protocol=sync,semi_async", "data.num_clients=12,20", "local.lr=0.1,1",
           "fedqs.feedback=true,False", "model.hidden=(8,),(16,8)", "fedqs.a=1,2",
           "fedqs.k=3,4"]  # fmt: skip
  grid = sweep.from_flags(config, flags, ["fedqs.feedback,fedqs.a,fedqs.k"])
  assert grid == sweep.product(  # the zip at the place of its first axis
    sweep.axis("schedule.protocol", ["sync", "semi_async"]),
    sweep.axis("data.num_clients", [12, 20]),
    sweep.axis("local.lr", [0.1, 1]),
    sweep.zip(
      sweep.axis("fedqs.feedback", [True, False]),
      sweep.axis("fedqs.a", [1, 2]),
      sweep.axis("fedqs.k", [3, 4]),
    ),
    sweep.axis("model.hidden", [(8,), (16, 8)]),
  )
  assert [type(v) for v in grid[0].values()] == [str, int, float, bool, float, float, tuple]
  assert len(grid) == 2 * 2 * 2 * 2 * 2
  assert {(p["fedqs.feedback"], p["fedqs.a"], p["fedqs.k"]) for p in grid} == {
    (True, 1.0, 3.0), (False, 2.0, 4.0),
  }  # fmt: skip
  assert sweep.from_flags(config, flags[:3]) == sweep.product(
    sweep.axis("schedule.protocol", ["sync", "semi_async"]),
    sweep.axis("data.num_clients", [12, 20]),
    sweep.axis("local.lr", [0.1, 1]),
  )
  assert sweep.split_values("(8,),(16, 8), 3") == ["(8,)", "(16, 8)", "3"]


def test_flag_points_multiply_the_config_files_points():
  config = tiny_config()
  with config.unlocked():
    config.sweep_points = sweep.axis("local.lr", [0.05, 0.1])
  config = sweep.with_flag_sweep(config, ["schedule.buffer_size=2,4"])
  assert config.sweep_points == sweep.product(
    sweep.axis("local.lr", [0.05, 0.1]), sweep.axis("schedule.buffer_size", [2, 4])
  )
  assert [static for static, _ in sweep.groups(config)] == [
    {"schedule.buffer_size": 2}, {"schedule.buffer_size": 4},
  ]  # fmt: skip
  sweep.check_groups(config)
  untouched = tiny_config()
  assert "sweep_points" not in sweep.with_flag_sweep(untouched, [], [])
  assert sweep.describe(untouched) == ""


@pytest.mark.parametrize(
  "flags,zips,words",
  [
    (["local.lr=0.1,fast"], [], ["local.lr takes numbers, got 'fast'"]),
    (["local.lr=0.1,,0.2"], [], ["value 2 is empty"]),
    (["local.lr=0.1,0.2"], ["local.lr,local.momentum"],
     ["--zip=local.lr,local.momentum", "local.momentum is not swept by a --sweep flag"]),
    (["local.lr=0.1,0.1"], [], ["lists 0.1 twice"]),
    (["local.lr=0.1", "local.lr=0.2"], [], ["swept by another --sweep"]),
    (["fedqs.feedback=maybe"], [], ["fedqs.feedback takes True or False, got 'maybe'"]),
    (["model.hidden=(8,),x"], [], ["model.hidden takes tuples"]),
    (["data=1,2"], [], ["data is neither a config field nor a hyperparameter"]),
    (["sweep.local.lr=1,2"], [], ["did you mean local.lr?"]),
    (["seed=1,2"], [], ["seed is neither"]),
    (["local.lr="], [], ["no values"]),
    (["=1,2"], [], ["--sweep=NAME=v1,v2"]),
    (["local.lr=0.1,0.2"], ["local.lr"], ["name two or more"]),
    (["local.lr=0.1,0.2", "local.clip=1,2"], ["local.lr,local.lr"], ["zipped twice"]),
    (["local.lr=0.1,0.2", "local.clip=1,2", "local.momentum=0,0.5"],
     ["local.lr,local.clip", "local.clip,local.momentum"], ["local.clip is zipped twice"]),
    ([], ["local.lr,local.clip"], ["no --sweep flag is given"]),
  ],
)  # fmt: skip
def test_bad_flags_name_the_flag(flags, zips, words):
  with pytest.raises(ConfigError) as info:
    sweep.with_flag_sweep(tiny_config(), flags, zips)
  for word in words:
    assert word in str(info.value), str(info.value)
  assert "\n" not in str(info.value)


def test_a_file_sweep_and_a_flag_sweep_of_one_name_are_refused():
  config = tiny_config()
  with config.unlocked():
    config.sweep_points = sweep.axis("schedule.buffer_size", [2, 4])
  with pytest.raises(ConfigError, match=r"swept by the config file's get_sweep\(\) already"):
    sweep.with_flag_sweep(config, ["schedule.buffer_size=3"])


def test_check_groups_names_the_group_only_when_the_sweep_is_the_cause():
  config = sweep.with_flag_sweep(tiny_config(), ["data.num_clients=3,12"])
  with pytest.raises(ConfigError, match=r"^sweep group data.num_clients=3: schedule.buffer_size"):
    sweep.check_groups(config)
  config = sweep.with_flag_sweep(tiny_config(), ["schedule.protocol=sync,gossip"])
  with pytest.raises(ConfigError, match=r"^sweep group schedule.protocol=gossip: schedule.prot"):
    sweep.check_groups(config)
  config = sweep.with_flag_sweep(tiny_config(**{"local.batch_size": 0}), ["data.num_clients=12,20"])
  with pytest.raises(ConfigError, match=r"^local.batch_size=0 is invalid"):
    sweep.check_groups(config)


def test_config_sweep_of_a_static_field_names_the_flag_to_use():
  with pytest.raises(ConfigError, match="--sweep=data.num_clients=10,20$"):
    cli.check_overrides(tiny_config(), ["main", "--config.sweep.data.num_clients=10,20"])
  with pytest.raises(ConfigError, match="--sweep=schedule.protocol=v1,v2$"):
    cli.check_overrides(tiny_config(), ["main", "--noconfig.sweep.schedule.protocol"])
  cli.check_overrides(tiny_config(), ["main", "--config.sweep.local.lr=0.1,0.2"])  # dynamic: fine
  with pytest.raises(ConfigError, match="config.sweep.nope is an unknown field"):
    cli.check_overrides(tiny_config(), ["main", "--config.sweep.nope.x=1"])


def test_describe_memory_names_the_largest_program():
  config = sweep.with_flag_sweep(
    tiny_config(**{"algorithms": "fedavg,fedbuff"}),
    ["schedule.buffer_size=2,4", "fedbuff.beta=0,0.5,0.9"],
  )
  estimates = []
  for static, group in sweep.groups(config):
    config_lib.validate(group)
    data = data_lib.load(group.data, group.data.seed)
    sched = program.make_schedule(group)
    for name in config_lib.algorithm_names(group):
      prog = program.build_program(group, name, data, sched.num_slots)
      estimates.append((static, name, program.memory_estimate(prog, data, sched)))
  largest = max(estimates, key=lambda t: t[2]["per_device"])
  assert largest[1] == "fedbuff" and largest[2]["points"] == 3  # FedBuff's 3 betas
  line = sweep.describe_memory(estimates)
  assert line.startswith(f"memory: largest program fedbuff[{sweep.label(largest[0])}]: about ")
  assert f"{largest[2]['per_device'] / 2**30:.3f} GiB per device (3 grid entries x " in line
  assert sweep.describe(config).splitlines()[1:] == [
    "  schedule.buffer_size=2: fedavg 1 point, fedbuff 3 points",
    "  schedule.buffer_size=4: fedavg 1 point, fedbuff 3 points",
  ]


def test_a_swept_field_may_be_invalid_unswept_when_every_group_is_valid(tmp_path):
  from fedqs_jax import run
  from tests.common import tiny_config

  def config():
    return tiny_config(**{"schedule.buffer_size": 20, "schedule.num_rounds": 5})  # N = 12

  with pytest.raises(ConfigError, match="schedule.buffer_size=20"):
    run.run(config(), str(tmp_path / "alone"))
  swept = sweep.with_flag_sweep(config(), ["schedule.buffer_size=2,4"])
  out = run.run(swept, str(tmp_path / "swept"))
  assert set(out["schedule"]) == {"schedule.buffer_size=2", "schedule.buffer_size=4"}
  bad = sweep.with_flag_sweep(config(), ["schedule.buffer_size=2,40"])
  with pytest.raises(ConfigError, match="sweep group schedule.buffer_size=40"):
    run.run(bad, str(tmp_path / "bad"))

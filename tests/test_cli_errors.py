"""Bad input to any CLI is one `error:` line on stderr and exit 2, before anything compiles.

One subprocess per CLI path (started together, they import JAX in parallel); the checks
behind each path are tested in this process.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import queueing as queueing_cli
from fedqs_jax import cli, io, memory
from fedqs_jax import config as config_lib
from fedqs_jax.errors import ConfigError, check, plain
from tests.common import ROOT, tiny_config

BINARY = bytes(range(256)) * 8  # not UTF-8


def _fixtures(folder) -> dict[str, str]:
  """Files the CLI cases point at."""
  paths = {name: str(folder / f"{name}.py") for name in ("broken", "light")}
  paths |= {name: str(folder / name) for name in ("a_file", "run", "cut")}
  (folder / "a_file").write_text("keep\n")
  (folder / "broken.py").write_text("def get_config(:\n")
  # A config without JAX (the default imports it): the flag-parsing cases start in 0.3 s.
  (folder / "light.py").write_text(
    "import ml_collections\n"
    "def get_config():\n"
    "  return ml_collections.ConfigDict({'schedule': {'num_rounds': 20}})\n"
  )
  for name, tail in (("run", "fedavg,0,10,2.0,0.6\n"), ("cut", "fedavg,0,1")):
    (folder / name).mkdir()
    (folder / name / "summary.csv").write_text(
      "algorithm,sweep,seed,final_accuracy\nfedavg,,0,0.6\n"
    )
    (folder / name / "metrics.csv").write_text(
      f"algorithm,seed,round,time,test_accuracy\nfedavg,0,5,1.0,0.5\n{tail}"
    )
    io.write_manifest(str(folder / name), ["summary.csv", "metrics.csv"], "fixture")  # whole
  return paths


# (id, module, args (formatted with the fixtures' paths), words the error line must hold)
CASES = [
  ("main-unknown-override", "main",
   ["--workdir={a_file}_run", "--config={light}", "--config.schedule.num_roundz=20"],
   ["config.schedule.num_roundz", "unknown", "did you mean config.schedule.num_rounds?"]),
  ("main-broken-config", "main", ["--workdir={a_file}_run", "--config={broken}"],
   ["config=", "broken.py", "line 1"]),
  ("main-typo-flag", "main", ["--config={light}", "--workdri=x"],
   ["--workdri", "did you mean --workdir?"]),
  ("main-validate", "main", ["--workdir={a_file}_run", "--config.algorithms=fedavg,fedavg"],
   ["algorithms='fedavg,fedavg'", "more than once"]),
  ("main-workdir-under-a-file", "main", ["--workdir={a_file}/sub"],
   ["workdir=", "a_file/sub", "is a file, not a folder"]),
  ("queueing-out-missing-folder", "queueing",
   ["--rates=1,2", "--horizon=10", "--out={a_file}_missing/r.json"],
   ["out=", "_missing/r.json", "does not exist"]),
  ("queueing-max-concurrency", "queueing",
   ["--rates=1,2", "--horizon=10", "--max_concurrency=100000"],
   ["max_concurrency=100000", "GiB", "are available"]),
  ("queueing-typo-flag", "queueing", ["--ratez=1,2", "--horizon=1"], ["--ratez", "--rates?"]),
  ("plot-workdir-is-a-file", "plot", ["--workdir={a_file}"],
   ["workdir=", "a_file", "not a folder"]),
  ("plot-truncated-metrics", "plot", ["--workdir={cut}"], ["metrics.csv, line 3", "truncated"]),
  ("plot-x-without-y", "plot", ["--workdir={run}", "--x=lr"], ["x='lr'", "--x and --y together"]),
  ("plot-x-is-y", "plot", ["--workdir={run}", "--x=lr", "--y=lr"], ["y='lr'", "differ from --x"]),
  ("plot-typo-flag", "plot", ["--workdri={run}"], ["--workdri", "did you mean --workdir?"]),
]  # fmt: skip


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
  """{case id: (exit code, stderr, paths)} of every CASES run, started at once."""
  paths = _fixtures(tmp_path_factory.mktemp("cli"))
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  procs = {
    name: subprocess.Popen(
      [sys.executable, "-m", f"experiments.{module}", *[a.format(**paths) for a in args]],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )  # fmt: skip
    for name, module, args, _ in CASES
  }
  return {name: (p.wait(timeout=300), p.communicate()[1], paths) for name, p in procs.items()}


@pytest.mark.parametrize("name,words", [(c[0], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_cli_bad_input_is_one_line_and_exit_2(cli_results, name, words):
  code, stderr, paths = cli_results[name]
  assert code == 2, stderr[-3000:]
  assert "Traceback" not in stderr
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
  for word in words:
    assert word in lines[0], lines[0]
  if name == "main-workdir-under-a-file":
    assert open(paths["a_file"]).read() == "keep\n"


def test_fail_prints_one_line_and_exits_2(capsys):
  with pytest.raises(SystemExit) as info:
    cli.fail(ConfigError("x=1 is invalid:\n  must be 2"))
  assert info.value.code == 2
  assert capsys.readouterr().err == "error: x=1 is invalid: must be 2\n"


# ----------------------------------------------------------------------------- --config


@pytest.mark.parametrize(
  "arg,words",
  [
    ("--config.schedule.num_roundz=20", ["config.schedule.num_roundz is an unknown field",
                                         "did you mean config.schedule.num_rounds?"]),
    ("--config.sweep.lrr=0.1,0.2", ["config.sweep.lrr is an unknown field", "did you mean",
                                    ".lr?"]),
    ("--config.nope.x=1", ["config.nope is an unknown field", "(config has algorithms, "]),
    ("--config.schedule.num_rounds=abc", ["schedule.num_rounds='abc' is invalid",
                                          "must be an integer"]),
    ("--config.engine.memory_limit_gb=lots", ["engine.memory_limit_gb='lots' is invalid",
                                              "must be a number"]),
    ("--config.model.hidden=abc", ["model.hidden='abc' is invalid", "must be integers"]),
  ],
)  # fmt: skip
def test_bad_override_names_the_field(arg, words):
  with pytest.raises(ConfigError) as info:
    cli.check_overrides(tiny_config(), ["main", "--workdir=x", arg])
  for word in words:
    assert word in str(info.value)


def test_good_overrides_pass():
  args = ["--config.schedule.num_rounds=20", "--config.engine.memory_limit_gb=1e3",
          "--config.model.hidden=(8,)", "--config.time.seed", "3",
          "--", "--config.nope=1"]  # fmt: skip
  cli.check_overrides(tiny_config(), ["main", *args])


def test_split_config_finds_the_config_file():
  argv = ["main", "--config", "a.py:x", "--workdir=w", "--config.seed=1"]
  assert cli.split_config(argv, "d.py") == (["main", "--workdir=w", "--config.seed=1"], "a.py:x")
  assert cli.split_config(["main", "--config=b.py"], "d.py") == (["main"], "b.py")
  assert cli.split_config(["main"], "d.py") == (["main"], "d.py")
  with pytest.raises(ConfigError, match="--config needs a value"):
    cli.split_config(["main", "--config"], "d.py")


@pytest.mark.parametrize(
  "spec,words",
  [
    ("{tmp}/missing.py", ["config=", "missing.py", "no such config file"]),
    ("{tmp}", ["is a folder"]),
    ("{tmp}/broken.py", ["broken.py", "line 1", "syntax error"]),
    ("{tmp}/raises.py", ["raises.py", "loading it raised ZeroDivisionError"]),
    ("{tmp}/none.py", ["none.py", "defines no get_config()"]),
    ("experiments/configs/fedqs_cifar10.py:nope", ["fedqs_cifar10.py:nope",
                                                   "takes 'paper' or 'smoke', got 'nope'"]),
    ("experiments/configs/default.py:x", ["default.py:x", "takes no :argument"]),
  ],
)  # fmt: skip
def test_bad_config_file_names_it(tmp_path, monkeypatch, spec, words):
  monkeypatch.chdir(ROOT)
  (tmp_path / "broken.py").write_text("def get_config(:\n")
  (tmp_path / "raises.py").write_text("1 / 0\n")
  (tmp_path / "none.py").write_text("x = 1\n")
  with pytest.raises(ConfigError) as info:
    cli.load_config(spec.format(tmp=tmp_path))
  for word in words:
    assert word in str(info.value)
  assert "\n" not in str(info.value)


def test_config_file_loads_with_its_argument(monkeypatch):
  monkeypatch.chdir(ROOT)
  config, path = cli.load_config("experiments/configs/fedqs_cifar10.py:smoke")
  assert path == "experiments/configs/fedqs_cifar10.py" and config.data.name == "cifar10"
  assert cli.load_config("experiments/configs/default.py")[0].data.name == "digits"


# ----------------------------------------------------------------------------- validate


def _validate_error(tmp_path, **overrides) -> str:
  with pytest.raises(ConfigError) as info:
    config_lib.validate(tiny_config(**overrides), str(tmp_path / "run"))
  return str(info.value)


def test_binary_latency_file(tmp_path):
  path = tmp_path / "latencies.csv"
  path.write_bytes(BINARY)
  message = _validate_error(tmp_path, **{"time.latency_file": str(path)})
  assert f"time.latency_file={str(path)!r} is invalid" in message and "UTF-8" in message


def test_non_numeric_latencies(tmp_path):
  message = _validate_error(tmp_path, **{"time.latencies": ("abc",)})
  assert "time.latencies='abc' is invalid: must be numbers" in message


def test_duplicate_algorithms(tmp_path):
  message = _validate_error(tmp_path, algorithms="fedavg,fedsgd,fedavg")
  assert "algorithms='fedavg,fedsgd,fedavg' is invalid: lists fedavg more than once" in message


@pytest.mark.parametrize("protocol", ["semi_async", "sync", "tick"])
def test_routing_without_the_queueing_protocol(tmp_path, protocol):
  routing = ",".join(["0.5", "0.5"] + ["0"] * 10)
  message = _validate_error(tmp_path, **{"schedule.routing": routing,
                                         "schedule.protocol": protocol})  # fmt: skip
  assert f"schedule.routing={routing!r} is invalid" in message and protocol in message
  for uniform in (None, "", "  "):  # not given
    config_lib.validate(tiny_config(**{"schedule.routing": uniform, "schedule.protocol": protocol}))


def test_routing_with_the_queueing_protocol_is_used():
  routing = ",".join(["0.5", "0.5"] + ["0"] * 10)
  config = tiny_config(**{"schedule.routing": routing, "schedule.protocol": "queueing",
                          "schedule.buffer_size": 2})  # fmt: skip
  config_lib.validate(config)


@pytest.mark.parametrize("limit", [-1.0, -0.5, float("nan")])
def test_negative_memory_limit(tmp_path, limit):
  message = _validate_error(tmp_path, **{"engine.memory_limit_gb": limit})
  allowed = "must be >= 0" if limit == limit else "must be a finite number"  # NaN: any float
  assert f"engine.memory_limit_gb={limit!r} is invalid: {allowed}" in message


def test_values_are_shown_as_written(tmp_path):
  message = _validate_error(tmp_path, **{"time.latencies": (3,) * 11 + (-4,)})
  assert "time.latencies=-4.0 is invalid" in message and "np." not in message
  with pytest.raises(ConfigError, match=r"^x=\(1, 2.5, \[3\]\) is invalid: no$"):
    check(False, "x", (np.int64(1), np.float32(2.5), np.array([3])), "no")
  assert plain({"a": [np.float64(-4.0)], "b": "s"}) == {"a": [-4.0], "b": "s"}


# ----------------------------------------------------------------------------- paths


def test_writable_folder(tmp_path, monkeypatch):
  (tmp_path / "a_file").write_text("keep")
  cli.check_writable_folder("workdir", str(tmp_path / "new" / "deeper"))  # can be created
  cli.check_writable_folder("workdir", str(tmp_path))
  for path, words in [
    (tmp_path / "a_file", "exists and is not a folder"),
    (tmp_path / "a_file" / "sub" / "run", f"cannot be created: {tmp_path / 'a_file'} is a file"),
    ("", "must be a folder path"),
  ]:
    with pytest.raises(ConfigError, match="workdir=") as info:
      cli.check_writable_folder("workdir", str(path))
    assert words in str(info.value)
  # A read-only folder (os.access: a mode or a read-only mount; root ignores modes).
  readonly = tmp_path / "readonly"
  readonly.mkdir()
  real = os.access
  monkeypatch.setattr(os, "access", lambda p, m: real(p, m) and str(p) != str(readonly))
  with pytest.raises(ConfigError, match=f"cannot be created: {readonly} is not writable"):
    cli.check_writable_folder("workdir", str(readonly / "run"))
  with pytest.raises(ConfigError, match="is a folder that is not writable"):
    cli.check_writable_folder("workdir", str(readonly))


def test_writable_file(tmp_path, monkeypatch):
  cli.check_writable_file("out", str(tmp_path / "r.json"))
  (tmp_path / "r.json").write_text("{}")
  cli.check_writable_file("out", str(tmp_path / "r.json"))  # replaced atomically
  for path, words in [
    (tmp_path, "is a folder"),
    (tmp_path / "missing" / "r.json", "does not exist"),
  ]:
    with pytest.raises(ConfigError, match="out=") as info:
      cli.check_writable_file("out", str(path))
    assert words in str(info.value)
  real = os.access
  monkeypatch.setattr(os, "access", lambda p, m: real(p, m) and str(p) != str(tmp_path))
  with pytest.raises(ConfigError, match="is not writable"):
    cli.check_writable_file("out", str(tmp_path / "r.json"))


# ----------------------------------------------------------------------------- memory


def test_available_bytes_is_what_is_free_now_on_cpu():
  import jax

  got = memory.available_bytes(jax.devices("cpu")[0])
  assert 0 < got <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  if os.path.exists("/proc/meminfo"):
    with open("/proc/meminfo") as f:
      kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    assert abs(got - kb * 1024) < 2**28  # read a moment apart


@pytest.mark.parametrize("n,c,m", [(3, 50, 50)])  # m > 1: --max_concurrency's vmap over C
def test_queueing_memory_estimate_bounds_xla(n, c, m):
  import jax.numpy as jnp

  from fedqs_jax import queueing as q

  steps = 20
  mu, consts, horizon, theta0 = q._optimizer_inputs(
    np.linspace(1, 4, n), "wall_clock", q.BoundConstants(), 10.0, steps, 0.05, None
  )
  single, vmapped = q._routing_optimizer("wall_clock", steps, 0.05, c)
  if m == 1:
    compiled = single.lower(mu, None, consts, horizon, theta0).compile()
  else:
    cs = jnp.arange(1, m + 1, dtype=jnp.int32)
    compiled = vmapped.lower(mu, cs, consts, horizon, theta0).compile()
  stats = compiled.memory_analysis()
  used = stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
  estimate = queueing_cli.solve_bytes(n, m, c, steps, jnp.dtype(jnp.result_type(1.0)).itemsize)
  assert used <= estimate <= used + 2 * 2**20

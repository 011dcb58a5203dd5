"""Everything an accelerator run should measure, in one command under a time budget.

  PYTHONPATH=. python benchmarks/accelerator.py --out=report.json              # ~5 minutes
  PYTHONPATH=. python benchmarks/accelerator.py --out=report.json --budget_s=120
  PYTHONPATH=. python benchmarks/accelerator.py --cpu-smoke --out=smoke.json   # CPU, tiny sizes

It installs and downloads nothing, and imports no TensorFlow (the CIFAR-shaped workload is
synthetic). Sections, in order; the JSON report is rewritten after each one, so a run cut
short still leaves the sections it finished:

  devices        `jax.devices()`, platform, device kind, `memory_stats()`, versions.
  tests          a GPU subset of the test suite (`GPU_TESTS`: client modes give the same
                 payloads, a grid point / a seed of a batch equals its solo run, the grid
                 sharded over 8 devices equals the unsharded run, FedQS with every Mod off is
                 its baseline), one pytest subprocess under a time cap; counts and the outcome
                 of every node id.
  engine         throughput of every execution mode (`engine_modes`: each of
                 `engine.CLIENT_MODES` with the default round mode and local loop, then each
                 other `ROUND_MODES` and `LOCAL_LOOPS` value with vmap; a new client mode is
                 picked up by itself; a mode that raises is recorded with its error) on three
                 workloads, each in its own subprocess (a cold compile, a fresh allocator):
                   mlp, cnn   digits as `benchmarks/throughput.py` builds them (N = 100,
                              Dirichlet 0.1, semi_async K = 10, batch 32, 2 epochs, FedAvg);
                   resnet18   the paper's CIFAR-10 run (`fedqs_cifar10.py`: ResNet-18 width 64
                              with BatchNorm, N = 100, K = 10, 2 local epochs, batch 50, 20% of
                              each client held out for validation) at Dirichlet 0.1, on
                              synthetic 32x32x3 images with CIFAR-10's labels (5,000 per
                              class): the Dirichlet label partition depends only on the class
                              counts and the seed, so every client has the real run's size and
                              class mix.
                 Per mode (`throughput.measure_engine`: a compile chunk, a warm-up chunk, then
                 timed chunks): compile time, rounds/s, real client-steps/s, executed step
                 slots (real + padding; None where the mode's packing is not known here).
  grid           per-point cost of one compiled program over G = 1, 16, 64, 256 points (a
                 `local.lr` sweep of the MLP workload, one seed): time per round per point
                 and the amortisation G x t(1) / t(G).
  extrapolation  the paper's 400-round CIFAR-10 run (one seed, one algorithm) from the best
                 ResNet-18 mode's rounds/s, with and without its compile and the version-0
                 dispatch (init).
  memory         the estimator (`program.memory_estimate`) against the device's
                 `memory_stats()["peak_bytes_in_use"]` of each workload's subprocess, after
                 init and after each mode (the peak only grows: a later mode's peak is
                 exact only when it raised it); on CPU the device gives none, and the
                 subprocess's peak RSS (VmHWM) is recorded instead.

`--budget_s` (default 300) bounds the whole run: every section gets a share of the time left
(unused time flows to the next), a subprocess is killed at its deadline (the modes it finished
are kept), no section starts when less than `MIN_SECTION_S` is left, and a budget under the
default measures fewer rounds and drops the largest grids. `--cpu-smoke` runs every section
on CPU with tiny sizes (`SIZES["smoke"]`: every mode on the MLP, the default mode on the CNN
and on a width-4 ResNet-18 over 8 clients, grids up to G = 16, two fast tests; 170 s budget)
to check the script end to end before an accelerator run; its rates mean little.
`--modes`, `--workloads`, `--sections`, `--tests`, `--grid_sizes` narrow a run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the sibling benchmark modules (run as a script, HERE is there already)
  sys.path.insert(0, HERE)
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from common import loadavg, table, version  # noqa: E402

if "--cpu-smoke" in sys.argv[1:] or "--cpu_smoke" in sys.argv[1:]:
  os.environ["JAX_PLATFORMS"] = "cpu"  # before JAX is imported, here and in the subprocesses
# This process only reads the devices; the measured subprocesses get the accelerator's memory
# with the allocator settings the caller gave (none: JAX's defaults).
_PREALLOCATE = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")
os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"

DEFAULT_BUDGET_S = 300.0
MIN_SECTION_S = 8.0  # no section starts with less time left (smoke: a third of it)
RESULT_PREFIX = "ACCELERATOR_RECORD "
PAPER_ROUNDS = 400  # fedqs_cifar10.py: schedule.num_rounds

# The GPU subset of the test suite, in priority order (pytest keeps the order of node ids):
# seconds on the 2-core CPU in brackets.
GPU_TESTS = (
  "tests/test_engine.py::test_client_modes_give_the_same_payloads",  # every client mode (16 s)
  "tests/test_engine.py::test_while_and_scan_local_loops_train_identically",  # (3 s)
  "tests/test_engine.py::test_paper_models_train_alike_in_every_client_mode[fcn]",  # (4 s)
  "tests/test_engine.py::test_round_modes_agree_and_seed_batch_equals_solo_runs",  # (10 s)
  "tests/test_sweep.py::test_a_point_in_a_grid_equals_its_solo_run",  # (12 s)
  "tests/test_fedqs.py::test_fedqs_with_every_mod_off_is_its_baseline",  # 2 x (20 s)
  "tests/test_sharding.py::test_grid_sharded_over_8_devices_equals_unsharded",  # (56 s)
)
SMOKE_TESTS = (
  "tests/test_engine.py::test_client_modes_give_the_same_payloads[scan]",
  "tests/test_engine.py::test_while_and_scan_local_loops_train_identically",
)

# Sizes: the accelerator run, and the CPU smoke test. `chunks` = timed chunks per mode
# (`measure_engine` adds a compile and a warm-up chunk).
SIZES = {
  "full": {
    "mlp": {"chunk": 10, "chunks": 5},
    "cnn": {"chunk": 5, "chunks": 4},
    "resnet18": dict(
      chunk=2, chunks=2, width=64, clients=100, buffer_size=10, per_class=5000, test=10000
    ),  # fmt: skip
    "grid": {"chunk": 10, "chunks": 3, "sizes": (1, 16, 64, 256)},
  },
  # Every mode on the MLP; the default mode alone on the CNN and ResNet-18 (the same code
  # paths, slow compiles on CPU). Most XLA optimizations off (fast compiles) for the dense
  # MLP; convolutions would then run far too slowly.
  "smoke": {
    "mlp": {"chunk": 5, "chunks": 1, "fast_compile": True},
    "cnn": {"chunk": 2, "chunks": 1, "default_mode_only": True},
    "resnet18": {
      "chunk": 1,
      "chunks": 1,
      "width": 4,
      "clients": 8,
      "buffer_size": 2,
      "per_class": 10,
      "test": 100,
      "default_mode_only": True,
    },
    "grid": {"chunk": 5, "chunks": 1, "sizes": (1, 4, 16), "fast_compile": True},
  },
}
# Shares of the time left that each section gets (the tests and each workload).
SHARES = {
  "full": {"tests": 0.22, "mlp": 0.08, "cnn": 0.12, "resnet18": 0.38, "grid": 0.15},
  "smoke": {"tests": 0.1, "mlp": 0.15, "cnn": 0.2, "resnet18": 0.42, "grid": 0.13},
}
WORKLOADS = ("mlp", "cnn", "resnet18")
SECTIONS = ("devices", "tests", "engine", "grid", "extrapolation", "memory")


def now() -> float:
  return time.perf_counter()


def fmt(x, digits: int = 0) -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "-"
  return f"{x:,.{digits}f}"


def mib(x) -> str:
  return "-" if x is None else f"{x / 2**20:,.0f}"


# ---------------------------------------------------------------------------
# Arguments.


def parse_args(argv: list[str]) -> argparse.Namespace:
  from fedqs_jax.cli import fail

  class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
      fail(message)

  p = Parser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--out", default="", help="write the JSON report here (after every section)")
  p.add_argument("--budget_s", type=float, default=None,
                 help=f"wall-time budget of the whole run, seconds (default {DEFAULT_BUDGET_S:g}; "
                 "smoke 170)")  # fmt: skip
  p.add_argument("--cpu-smoke", "--cpu_smoke", dest="cpu_smoke", action="store_true",
                 help="every section on CPU with tiny sizes")  # fmt: skip
  p.add_argument("--sections", default=",".join(SECTIONS),
                 help=f"comma-separated sections to run, of {','.join(SECTIONS)}")  # fmt: skip
  p.add_argument("--workloads", default=",".join(WORKLOADS),
                 help=f"comma-separated engine workloads, of {','.join(WORKLOADS)}")  # fmt: skip
  p.add_argument("--tests", default="",
                 help="comma-separated pytest node ids (default: GPU_TESTS)")  # fmt: skip
  p.add_argument("--modes", default="",
                 help="comma-separated client/round/local modes (default: all)")  # fmt: skip
  p.add_argument("--grid_sizes", default="", help="comma-separated G (default 1,16,64,256)")
  p.add_argument("--inline", action="store_true",
                 help="run the workloads in this process, not in subprocesses (tests)")  # fmt: skip
  p.add_argument("--child", default="", help=argparse.SUPPRESS)  # internal: a job file (JSON)
  args = p.parse_args(argv)
  if args.child:
    return args
  if args.budget_s is None:
    args.budget_s = 170.0 if args.cpu_smoke else DEFAULT_BUDGET_S
  if not (math.isfinite(args.budget_s) and 1 <= args.budget_s <= 86400):
    fail(f"--budget_s={args.budget_s:g} is invalid: must be in [1, 86400] seconds")
  args.sections = _choices("--sections", args.sections, SECTIONS)
  args.workloads = _choices("--workloads", args.workloads, WORKLOADS)
  args.tests = [t for t in args.tests.split(",") if t] or list(
    SMOKE_TESTS if args.cpu_smoke else GPU_TESTS
  )
  sizes = SIZES["smoke" if args.cpu_smoke else "full"]
  args.modes = [m for m in args.modes.split(",") if m]
  for m in args.modes:
    if len(m.split("/")) != 3:
      fail(f"--modes={m!r} is invalid: each mode must be client_mode/round_mode/local_loop")
  if args.grid_sizes:
    try:
      args.grid_sizes = [int(g) for g in args.grid_sizes.split(",") if g]
    except ValueError:
      fail(f"--grid_sizes={args.grid_sizes!r} is invalid: must be comma-separated integers >= 1")
    if not args.grid_sizes or min(args.grid_sizes) < 1:
      fail(f"--grid_sizes={args.grid_sizes} is invalid: must be integers >= 1")
  else:
    args.grid_sizes = list(sizes["grid"]["sizes"])
  return args


def _choices(flag: str, value: str, allowed: tuple[str, ...]) -> list[str]:
  from fedqs_jax.cli import fail

  chosen = [v for v in value.split(",") if v]
  bad = [v for v in chosen if v not in allowed]
  if bad or not chosen:
    fail(f"{flag}={value!r} is invalid: must be a comma-separated subset of {','.join(allowed)}")
  return chosen


def trimmed_sizes(cpu_smoke: bool, budget_s: float, grid_sizes: list[int]) -> dict:
  """The sizes of this run: a budget under the default times fewer chunks and drops the
  largest grids (G > 64 under 0.6 x the default budget, G > 16 under 0.3 x)."""
  sizes = json.loads(json.dumps(SIZES["smoke" if cpu_smoke else "full"]))
  scale = 1.0 if cpu_smoke else min(budget_s / DEFAULT_BUDGET_S, 1.0)
  for name in (*WORKLOADS, "grid"):
    sizes[name]["chunks"] = max(1, round(sizes[name]["chunks"] * scale))
  cap = math.inf if scale >= 0.6 else (64 if scale >= 0.3 else 16)
  sizes["grid"]["sizes"] = [g for g in grid_sizes if g <= cap] or [min(grid_sizes)]
  sizes["grid"]["dropped"] = [g for g in grid_sizes if g not in sizes["grid"]["sizes"]]
  return sizes


# ---------------------------------------------------------------------------
# The workloads (run in a subprocess, or inline): data, program, initial state.


def engine_modes():
  """The execution modes measured: every client mode with the default round mode and local
  loop, then every other round mode and local loop with vmap clients. Lockstep and the
  accelerators' default (`engine.auto_client_mode`) come first, modes that unroll last
  (their compile grows with the unrolled work)."""
  from throughput import DEFAULT_MODE

  from fedqs_jax import engine

  modes = [DEFAULT_MODE, DEFAULT_MODE._replace(client_mode=engine.auto_client_mode("gpu"))]
  modes += [DEFAULT_MODE._replace(client_mode=m) for m in engine.CLIENT_MODES]
  modes += [DEFAULT_MODE._replace(round_mode=m) for m in engine.ROUND_MODES]
  modes += [DEFAULT_MODE._replace(local_loop=m) for m in engine.LOCAL_LOOPS]
  unique = list(dict.fromkeys(modes))
  return sorted(unique, key=lambda m: "unroll" in (m.client_mode, m.round_mode))


def mode_name(mode) -> str:
  return f"{mode.client_mode}/{mode.round_mode}/{mode.local_loop}"


def parse_mode(name: str):
  """`throughput.Mode` of "client_mode/round_mode/local_loop"."""
  from throughput import Mode

  client_mode, round_mode, local_loop = name.split("/")
  return Mode(client_mode, round_mode, local_loop)


# Client modes whose executed step slots `throughput.Workload.executed_steps` knows.
KNOWN_PACKING = ("vmap", "map", "unroll", "lanes")


def cifar_shaped_data(config, per_class: int, test_size: int):
  """CIFAR-10's training labels (`per_class` of each of 10 classes) split as `load_tfds`
  splits them (`hetero_dirichlet` drawing from `SeedSequence([seed, 1])`), with validation
  drawn as `data.load` draws it, on synthetic 32x32x3 images in [-1, 1]. The partition and
  validation depend on the labels only through the class counts, so with per_class = 5,000
  every client has the size and class mix of the real CIFAR-10 run."""
  import numpy as np

  from fedqs_jax import data as data_lib
  from fedqs_jax.data import partition

  d, seed = config.data, config.data.seed
  labels = np.repeat(np.arange(10), per_class).astype(np.int32)
  part_rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
  parts = partition.hetero_dirichlet(labels, d.num_clients, d.dirichlet_alpha, part_rng)
  rng = np.random.default_rng(seed)
  x_train = rng.random((len(labels), 32, 32, 3), dtype=np.float32) * 2 - 1
  x_test = rng.random((test_size, 32, 32, 3), dtype=np.float32) * 2 - 1
  y_test = rng.integers(0, 10, test_size).astype(np.int32)
  data = partition.pack(x_train, labels, parts, x_test, y_test, num_classes=10)
  return data_lib.with_validation(
    data,
    fraction=d.get("validation_fraction", 0.0),
    mode=d.get("validation_mode", "holdout"),
    seed=data_lib._validation_seed(seed),
  )


def workload_config(name: str, sizes: dict):
  """The config of workload `name` (the digits ones as `throughput.make_workload` sets them)."""
  if name in ("mlp", "cnn"):
    from experiments.configs import default

    c = default.get_config()
    c.model.name = name
    c.data.partition = "dirichlet"
    return c
  from experiments.configs import fedqs_cifar10

  s = sizes["resnet18"]
  c = fedqs_cifar10.get_config("paper")
  c.data.dirichlet_alpha = 0.1
  c.data.num_clients = s["clients"]
  c.model.width = s["width"]
  c.schedule.buffer_size = s["buffer_size"]
  return c


def build_workload(name: str, sizes: dict, num_rounds: int, grid: int = 1):
  """`throughput.Workload` of `name` over a `local.lr` sweep of `grid` points (one seed, so
  all points share the schedule and do the same work), as `throughput.workload_from_config`
  builds it, on this workload's data; and the program's memory estimate."""
  import jax
  import jax.numpy as jnp
  from grid_scaling import lr_values
  from throughput import Workload

  from fedqs_jax import config as config_lib
  from fedqs_jax import data as data_lib
  from fedqs_jax import program

  c = workload_config(name, sizes)
  c.algorithms = "fedavg"
  c.num_seeds = 1
  c.schedule.num_rounds = num_rounds
  c.engine.eval_every = 1  # validated here; engines set their own chunk
  if grid > 1:
    c.sweep.local.lr = ",".join(f"{v:.6g}" for v in lr_values(grid))
  config_lib.validate(c)
  if name == "resnet18":
    data = cifar_shaped_data(c, sizes["resnet18"]["per_class"], sizes["resnet18"]["test"])
  else:
    data = data_lib.load(c.data, c.data.seed)
  sched = program.make_schedule(c)
  prog = program.build_program(c, "fedavg", data, sched.num_slots)
  estimate = program.memory_estimate(prog, data, sched)
  points = prog.points
  hparams = prog.grid_hparams(points)
  g = len(points)
  sched = jax.tree.map(lambda x: jnp.repeat(x, g, axis=0), sched)  # one seed, G points
  keys = lambda stream: jnp.repeat(program.seed_keys([c.seed], stream), g, axis=0)  # noqa: E731
  params = jax.vmap(lambda k: prog.model.init(k, data.x_train[:1]))(keys(program.INIT_STREAM))
  w = Workload(c, data, sched, prog.model, hparams, params)
  t0 = now()
  w.init_state = jax.block_until_ready(
    w.engine().init(
      keys(program.TRAIN_STREAM), params, sched.init_client, sched.init_slot, sched.init_mask,
      hparams, data,
    )
  )  # fmt: skip
  w.init_seconds = now() - t0
  return w, estimate


def device_memory() -> dict:
  """The first device's `memory_stats()` peak and current bytes (None on CPU), and this
  process's peak and current RSS."""
  import jax

  stats = jax.local_devices()[0].memory_stats() or {}
  out = {
    "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
    "bytes_in_use": stats.get("bytes_in_use"),
    "bytes_limit": stats.get("bytes_limit"),
  }
  try:
    with open("/proc/self/status") as f:
      text = f.read()
    for key in ("VmHWM", "VmRSS"):
      out[f"host_{key}"] = 1024 * int(re.search(rf"{key}:\s+(\d+)", text).group(1))
  except (OSError, AttributeError):
    pass
  return out


def measure_mode(w, mode, chunk: int, chunks: int) -> dict:
  """`throughput.measure_engine` of one mode, plus rounds/s and executed step slots."""
  import jax
  from throughput import measure_engine

  res = measure_engine(w, chunks * chunk, chunk, mode)
  res["rounds_per_s"] = res["rounds"] / res["seconds"]
  g = int(jax.tree.leaves(w.hparams)[0].shape[0])
  res["points"] = g
  if mode.client_mode in KNOWN_PACKING:
    res["executed_steps"] = int(round(res["client_steps"] / res["useful_fraction"]))
  else:  # the mode packs tasks its own way: executed slots not known here
    res["executed_steps"], res["useful_fraction"] = None, None
  return res


class Recorder:
  """Appends a job's records as JSON lines (to a file in a subprocess, to a list inline)."""

  def __init__(self, path: str | None):
    self.path, self.records = path, []

  def __call__(self, record: dict) -> None:
    record = json.loads(json.dumps(record, default=_json_default))
    self.records.append(record)
    if self.path:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")


def run_engine_job(job: dict, record: Recorder) -> None:
  """Every mode of one workload, until the job's deadline (records: build, mode..., end)."""
  import gc

  name, sizes, deadline = job["workload"], job["sizes"], job["deadline"]
  s = sizes[name]
  chunk, chunks = s["chunk"], s["chunks"]
  t0 = now()
  w, estimate = build_workload(name, sizes, (chunks + 2) * chunk)
  counts = [int(c) for c in w.data.client_count.tolist()]
  record({
    "kind": "build", "workload": name, "build_s": now() - t0, "init_s": w.init_seconds,
    "estimate": estimate, "memory": device_memory(),
    "clients": len(counts), "client_sizes": {"min": min(counts), "max": max(counts),
                                             "mean": sum(counts) / len(counts),
                                             "empty": sum(c == 0 for c in counts)},
    "train_examples": int(w.data.x_train.shape[0]),
    "max_local_steps": int(w.engine().num_local_steps),
    "chunk": chunk, "chunks": chunks, "config": {
      "model": w.config.model.name, "width": w.config.model.get("width"),
      "clients": w.config.data.num_clients, "buffer_size": w.config.schedule.buffer_size,
      "batch_size": w.config.local.batch_size, "epochs": w.config.local.epochs,
      "dirichlet_alpha": w.config.data.dirichlet_alpha,
    },
  })  # fmt: skip
  last = None
  modes = [parse_mode(m) for m in job["modes"]] if job.get("modes") else engine_modes()
  if s.get("default_mode_only") and not job.get("modes"):
    modes = modes[:1]
  for mode in modes:
    left = deadline - time.time()
    if last is not None and left < last:  # the previous mode took longer than what is left
      why = f"budget: {left:.0f} s left, the previous mode took {last:.0f} s"
      record({"kind": "mode", "mode": mode_name(mode), **mode._asdict(), "status": "skipped",
              "reason": why})  # fmt: skip
      continue
    record({"kind": "start", "mode": mode_name(mode)})
    m0 = now()
    try:
      res = measure_mode(w, mode, chunk, chunks)
      res.update(status="ok", mode=mode_name(mode), label=res["mode"])
    except Exception as e:  # noqa: BLE001 - a mode that raises is recorded, the others go on
      res = {"mode": mode_name(mode), **mode._asdict(), "status": "error",
             "error": f"{type(e).__name__}: {str(e)[:600]}",
             "traceback": traceback.format_exc()[-2000:]}  # fmt: skip
    res["elapsed_s"] = last = now() - m0
    res["memory"] = device_memory()
    record({"kind": "mode", **res})
    gc.collect()
  record({"kind": "end"})


def run_grid_job(job: dict, record: Recorder) -> None:
  """The MLP workload over G = sizes of a `local.lr` sweep, default mode, one program per G."""
  import gc

  from throughput import DEFAULT_MODE

  sizes, deadline = job["sizes"], job["deadline"]
  s = sizes["grid"]
  chunk, chunks = s["chunk"], s["chunks"]
  last, last_g = None, None
  for g in s["sizes"]:
    left = deadline - time.time()
    if last is not None and left < 1.5 * last:  # a larger grid costs at least as much
      record({"kind": "grid", "grid": g, "status": "skipped",
              "reason": f"budget: {left:.0f} s left, G = {last_g} took {last:.0f} s"})  # fmt: skip
      continue
    record({"kind": "start", "grid": g})
    t0 = now()
    try:
      w, estimate = build_workload("mlp", sizes, (chunks + 2) * chunk, grid=g)
      res = measure_mode(w, DEFAULT_MODE, chunk, chunks)
      res.update(status="ok", grid=g, init_s=w.init_seconds, estimate=estimate)
      res["round_s"] = res["seconds"] / res["rounds"]
      res["point_round_s"] = res["round_s"] / g
      del w
    except Exception as e:  # noqa: BLE001
      res = {"grid": g, "status": "error", "error": f"{type(e).__name__}: {str(e)[:600]}",
             "traceback": traceback.format_exc()[-2000:]}  # fmt: skip
    res["elapsed_s"] = last = now() - t0
    last_g = g
    res["memory"] = device_memory()
    record({"kind": "grid", **res})
    gc.collect()
  record({"kind": "end"})


JOBS = {"engine": run_engine_job, "grid": run_grid_job}


def child_main(job_path: str) -> int:
  with open(job_path) as f:
    job = json.load(f)
  JOBS[job["kind"]](job, Recorder(job["results"]))
  return 0


# ---------------------------------------------------------------------------
# The parent: sections under the budget.


class Budget:
  def __init__(self, seconds: float, min_section_s: float, shares: dict[str, float]):
    self.start, self.seconds, self.min_section_s = now(), seconds, min_section_s
    self.shares = shares

  def left(self) -> float:
    return self.seconds - (now() - self.start)

  def share(self, name: str, pending: list[str]) -> float:
    """Seconds for section part `name`: its share of the time left among `pending` parts."""
    total = sum(self.shares[p] for p in pending) or 1.0
    return max(self.left(), 0.0) * self.shares[name] / total


def run_job(kind: str, job: dict, timeout: float, inline: bool) -> tuple[list[dict], dict]:
  """Runs a job in a subprocess (killed after `timeout` s) or inline; its records, and how
  it ended."""
  job = dict(job, kind=kind, deadline=time.time() + timeout)
  if inline:
    rec = Recorder(None)
    try:
      JOBS[kind](job, rec)
      return rec.records, {"returncode": 0}
    except Exception as e:  # noqa: BLE001
      return rec.records, {"returncode": 1, "error": f"{type(e).__name__}: {e}"[:600]}
  with tempfile.TemporaryDirectory() as tmp:
    job["results"] = os.path.join(tmp, "records.jsonl")
    path = os.path.join(tmp, "job.json")
    with open(path, "w") as f:
      json.dump(job, f)
    env = dict(
      os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    )
    env.pop("XLA_PYTHON_CLIENT_PREALLOCATE")
    if _PREALLOCATE is not None:
      env["XLA_PYTHON_CLIENT_PREALLOCATE"] = _PREALLOCATE
    part = job["sizes"][job.get("workload", "grid")]
    if part.get("fast_compile"):
      env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    ended: dict[str, Any] = {}
    try:
      proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), f"--child={path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(timeout, 1.0),
      )  # fmt: skip
      ended["returncode"] = proc.returncode
      if proc.returncode != 0:
        ended["stderr_tail"] = proc.stderr[-3000:]
    except subprocess.TimeoutExpired:
      ended.update(returncode=None, killed=f"time limit {timeout:.0f} s")
    records = []
    if os.path.exists(job["results"]):
      with open(job["results"]) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return records, ended


def devices_section() -> dict:
  import jax
  import jaxlib

  devs = []
  for d in jax.devices():
    try:
      stats = d.memory_stats()
    except Exception:  # noqa: BLE001 - optional
      stats = None
    devs.append({"id": d.id, "platform": d.platform, "device_kind": d.device_kind,
                 "str": str(d), "memory_stats": stats})  # fmt: skip
  return {
    "devices": devs,
    "device_count": jax.device_count(),
    "default_backend": jax.default_backend(),
    "versions": {
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": getattr(jaxlib, "__version__", None) or version("jaxlib"),
      **{
        p: version(p)
        for p in (
          "flax",
          "optax",
          "chex",
          "orbax-checkpoint",
          "ml_collections",
          "numpy",
          "absl-py",
          "scikit-learn",
        )
      },  # fmt: skip
    },
    "cpu_count": os.cpu_count(),
    "machine": platform.machine(),
    "loadavg": loadavg(),
    "env": {k: os.environ.get(k) for k in ("JAX_PLATFORMS", "XLA_FLAGS", "CUDA_VISIBLE_DEVICES")},
  }


_TEST_LINE = re.compile(r"^(\S+::\S+)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")


def tests_section(node_ids: list[str], timeout: float) -> dict:
  """The node ids in one pytest subprocess, killed after `timeout` s; per node id outcome."""
  cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-v", "-p", "no:cacheprovider",
         "-rN", *node_ids]  # fmt: skip
  env = dict(
    os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
  )
  t0 = now()
  out: dict[str, Any] = {"node_ids": node_ids, "timeout_s": timeout}
  try:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    stdout, out["returncode"] = proc.stdout, proc.returncode
    stderr = proc.stderr
  except subprocess.TimeoutExpired as e:
    stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    out["returncode"], out["killed"] = None, f"time limit {timeout:.0f} s"
  out["seconds"] = now() - t0
  results = {}
  for line in stdout.splitlines():
    m = _TEST_LINE.match(line.strip())
    if m:
      results[m.group(1)] = m.group(2).lower()
  out["results"] = results
  counts = {k: 0 for k in ("passed", "failed", "skipped", "error", "xfail", "xpass")}
  for outcome in results.values():
    counts[outcome] += 1
  out["counts"] = counts
  out["not_run"] = [
    n for n in node_ids if not any(r == n or r.startswith(n + "[") for r in results)
  ]
  failed = [line for line in stdout.splitlines() if line.startswith(("FAILED", "ERROR", "E "))]
  out["failure_lines"] = failed[:40]
  if out.get("returncode") not in (0, None) and not results:
    out["output_tail"] = (stdout + stderr)[-3000:]
  return out


def collect_engine(records: list[dict], ended: dict) -> dict:
  build = next((r for r in records if r["kind"] == "build"), None)
  modes = {r["mode"]: r for r in records if r["kind"] == "mode"}
  started = [r["mode"] for r in records if r["kind"] == "start"]
  for name in started:
    if name not in modes:  # killed during this mode
      modes[name] = {"mode": name, "status": "killed", "reason": ended.get("killed", "crashed")}
  out = {"build": build, "modes": modes, "ended": ended}
  ok = {k: v for k, v in modes.items() if v.get("status") == "ok"}
  if ok:
    out["best"] = max(ok, key=lambda k: ok[k]["rounds_per_s"])
  return out


def collect_grid(records: list[dict], ended: dict, dropped: list[int]) -> dict:
  rows = {str(r["grid"]): r for r in records if r["kind"] == "grid"}
  for r in records:
    if r["kind"] == "start" and str(r["grid"]) not in rows:
      rows[str(r["grid"])] = {"grid": r["grid"], "status": "killed",
                              "reason": ended.get("killed", "crashed")}  # fmt: skip
  for g in dropped:
    rows[str(g)] = {"grid": g, "status": "skipped", "reason": "budget under 0.6 x the default"}
  one = rows.get("1")
  for r in rows.values():
    if r.get("status") == "ok" and one and one.get("status") == "ok":
      # G solo runs cost G x t(1) per round; the grid costs t(G).
      r["amortisation"] = r["grid"] * one["round_s"] / r["round_s"]
  return {"rows": rows, "ended": ended}


def extrapolation(engine: dict) -> dict:
  res = engine.get("resnet18", {})
  best = res.get("best")
  if not best:
    return {"status": "skipped", "reason": "no ResNet-18 mode was measured"}
  m, build = res["modes"][best], res["build"]
  train = PAPER_ROUNDS / m["rounds_per_s"]
  return {
    "status": "ok",
    "mode": best,
    "rounds": PAPER_ROUNDS,
    "rounds_per_s": m["rounds_per_s"],
    "train_s": train,
    "compile_s": m["compile_s"],
    "init_s": build["init_s"],
    "total_s": train + max(m["compile_s"], 0.0) + build["init_s"],
    "config": build["config"],
    "note": "one seed, one algorithm; evaluation every chunk of "
    f"{m['chunk']} rounds included; init = compile + run of the version-0 dispatch "
    f"of all {build['clients']} clients (vmap)",
  }


def memory_section(engine: dict, grid: dict) -> dict:
  rows = []
  for name, res in engine.items():
    build = res.get("build")
    if not build:
      continue
    est = build["estimate"]
    rows.append({"run": f"{name} init", "estimate": est["per_device"], **build["memory"]})
    for mode, m in res["modes"].items():
      if "memory" in m:
        rows.append({"run": f"{name} {mode}", "estimate": est["per_device"], **m["memory"]})
  for g, r in grid.get("rows", {}).items():
    if r.get("status") == "ok":
      rows.append({"run": f"grid G={g}", "estimate": r["estimate"]["per_device"], **r["memory"]})
  for r in rows:
    peak = r.get("peak_bytes_in_use")
    r["estimate_over_peak"] = r["estimate"] / peak if peak else None
  return {"rows": rows, "source": "device memory_stats peak_bytes_in_use of each subprocess "
          "(None on CPU: host_VmHWM is the subprocess's peak RSS)"}  # fmt: skip


# ---------------------------------------------------------------------------
# Tables.


def report_tables(results: dict) -> str:
  parts = []
  dev = results.get("devices")
  if isinstance(dev, dict) and "devices" in dev:
    d0 = dev["devices"][0]
    v = dev["versions"]
    parts.append(
      f"== devices ==\n   {dev['device_count']} x {d0['device_kind']} ({d0['platform']}); "
      f"jax {v['jax']}, jaxlib {v['jaxlib']}, flax {v['flax']}, optax {v['optax']}, python "
      f"{v['python']}; {dev['cpu_count']} CPUs, load {dev['loadavg']}"
    )
  t = results.get("tests")
  if isinstance(t, dict) and "counts" in t:
    c = t["counts"]
    rows = [[n, o] for n, o in t["results"].items()] + [[n, "not run"] for n in t["not_run"]]
    parts.append(
      f"== tests ({t['seconds']:.0f} s{', ' + t['killed'] if 'killed' in t else ''}): "
      f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped, {c['error']} errors, "
      f"{len(t['not_run'])} not run ==\n" + table(["node id", "outcome"], rows)
    )
  engine = results.get("engine", {})
  rows = []
  for name, res in engine.items():
    for mode, m in res.get("modes", {}).items():
      if m.get("status") == "ok":
        rows.append([name, mode, "ok", fmt(m["compile_s"], 1), fmt(m["rounds_per_s"], 2),
                     fmt(m["steps_per_s"]), str(m["rounds"]), fmt(m["client_steps"]),
                     fmt(m["executed_steps"]), fmt(m["elapsed_s"], 1)])  # fmt: skip
      else:
        why = m.get("error") or m.get("reason") or ""
        rows.append([name, mode, f"{m.get('status')}: {why[:60]}", "", "", "", "", "", "", ""])
    if not res.get("modes") and res.get("ended"):
      rows.append(
        [name, "-", f"failed: {json.dumps(res['ended'])[:80]}", "", "", "", "", "", "", ""]
      )
  if rows:
    header = ["workload", "mode", "status", "compile s", "rounds/s", "steps/s", "rounds",
              "real steps", "executed", "mode s"]  # fmt: skip
    notes = []
    for name, res in engine.items():
      b = res.get("build")
      if b:
        cs = b["client_sizes"]
        notes.append(
          f"   {name}: N={b['clients']}, {b['train_examples']:,} train examples, client sizes "
          f"{cs['min']}..{cs['max']} (mean {cs['mean']:.0f}, {cs['empty']} empty), <= "
          f"{b['max_local_steps']} local steps, {b['chunk']} rounds per chunk; init (compile + "
          f"version-0 dispatch) {b['init_s']:.1f} s; best {res.get('best', '-')}"
        )
    parts.append(
      "== engine throughput ==\n" + table(header, rows, left=3) + "\n" + "\n".join(notes)
    )
  grid = results.get("grid", {})
  if grid.get("rows"):
    rows = []
    for g, r in sorted(grid["rows"].items(), key=lambda kv: int(kv[0])):
      if r.get("status") == "ok":
        rows.append([g, "ok", fmt(r["compile_s"], 1), fmt(r["round_s"] * 1e3, 2),
                     fmt(r["point_round_s"] * 1e3, 3), fmt(r.get("amortisation"), 1) + "x",
                     mib(r["memory"].get("peak_bytes_in_use"))])  # fmt: skip
      else:
        rows.append([g, f"{r.get('status')}: {(r.get('error') or r.get('reason') or '')[:50]}",
                     "", "", "", "", ""])  # fmt: skip
    header = ["G", "status", "compile s", "round ms", "per point ms", "G x t1 / tG", "peak MiB"]
    parts.append("== grid (MLP, local.lr sweep, one program) ==\n" + table(header, rows, left=2))
  ex = results.get("extrapolation")
  if isinstance(ex, dict) and ex.get("status") == "ok":
    parts.append(
      f"== extrapolation: {ex['rounds']}-round CIFAR-10 run (ResNet-18 width "
      f"{ex['config']['width']}, N={ex['config']['clients']}, K={ex['config']['buffer_size']}) ==\n"
      f"   best mode {ex['mode']}: {ex['rounds_per_s']:.3f} rounds/s -> training "
      f"{ex['train_s'] / 60:.1f} min, + compile {ex['compile_s']:.0f} s + init {ex['init_s']:.0f} "
      f"s = {ex['total_s'] / 60:.1f} min ({ex['note']})"
    )
  elif isinstance(ex, dict):
    parts.append(f"== extrapolation: {ex.get('status')} ({ex.get('reason', '')}) ==")
  mem = results.get("memory", {})
  if mem.get("rows"):
    rows = [[r["run"], mib(r["estimate"]), mib(r.get("peak_bytes_in_use")),
             fmt(r.get("estimate_over_peak"), 2), mib(r.get("host_VmHWM"))]
            for r in mem["rows"]]  # fmt: skip
    header = ["run", "estimate MiB", "device peak MiB", "est./peak", "host peak RSS MiB"]
    parts.append("== memory: estimator vs measured peak ==\n" + table(header, rows))
  skipped = [f"{k}: {v.get('reason')}" for k, v in results.items()
             if isinstance(v, dict) and v.get("status") == "skipped" and k in SECTIONS]  # fmt: skip
  if skipped:
    parts.append("== skipped ==\n   " + "\n   ".join(skipped))
  return "\n\n".join(parts)


def _json_default(x):
  try:
    import numpy as np

    if isinstance(x, np.generic):
      return x.item()
  except ImportError:
    pass
  return str(x)


def write(path: str, results: dict) -> None:
  if not path:
    return
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(results, f, indent=2, default=_json_default)
  os.replace(tmp, path)


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  if args.child:
    return child_main(args.child)
  scale = "smoke" if args.cpu_smoke else "full"
  budget = Budget(args.budget_s, MIN_SECTION_S / (3 if args.cpu_smoke else 1), SHARES[scale])
  sizes = trimmed_sizes(args.cpu_smoke, args.budget_s, args.grid_sizes)
  results: dict[str, Any] = {
    "args": {k: v for k, v in vars(args).items() if k != "child"},
    "sizes": sizes,
    "timings": {},
  }

  def skip(name: str) -> dict | None:
    if name not in args.sections:
      return {"status": "skipped", "reason": "not in --sections"}
    if budget.left() < budget.min_section_s:
      return {"status": "skipped", "reason": f"budget: {budget.left():.0f} s left"}
    return None

  def done(name: str, t0: float) -> None:
    results["timings"][name] = now() - t0
    results["elapsed_s"] = now() - budget.start
    write(args.out, results)
    print(f"  [{name} done in {now() - t0:.1f} s, {budget.left():.0f} s left]", file=sys.stderr,
          flush=True)  # fmt: skip

  t0 = now()
  results["devices"] = skip("devices") or devices_section()
  done("devices", t0)

  pending = ["tests", *args.workloads, "grid"]
  t0 = now()
  results["tests"] = skip("tests") or tests_section(args.tests, budget.share("tests", pending))
  pending.remove("tests")
  done("tests", t0)

  results["engine"] = {}
  for name in args.workloads:
    t0 = now()
    why = skip("engine")
    if why:
      results["engine"][name] = {**why, "modes": {}}
    else:
      records, ended = run_job("engine", {"workload": name, "sizes": sizes, "modes": args.modes},
                               budget.share(name, pending), args.inline)  # fmt: skip
      results["engine"][name] = collect_engine(records, ended)
    pending.remove(name)
    done(f"engine {name}", t0)

  t0 = now()
  why = skip("grid")
  if why:
    results["grid"] = why
  else:
    records, ended = run_job("grid", {"sizes": sizes}, budget.share("grid", pending), args.inline)
    results["grid"] = collect_grid(records, ended, sizes["grid"]["dropped"])
  done("grid", t0)

  t0 = now()
  results["extrapolation"] = (
    {"status": "skipped", "reason": "not in --sections"}
    if "extrapolation" not in args.sections
    else extrapolation(results["engine"])
  )
  results["memory"] = (
    {"status": "skipped", "reason": "not in --sections"}
    if "memory" not in args.sections
    else memory_section(results["engine"], results["grid"])
  )
  results["loadavg_end"] = loadavg()
  done("extrapolation, memory", t0)
  print(report_tables(results), flush=True)
  print(f"\ntotal wall time {now() - budget.start:.1f} s (budget {args.budget_s:.0f} s)")
  if args.out:
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  with contextlib.suppress(BrokenPipeError):
    sys.exit(main(sys.argv[1:]))

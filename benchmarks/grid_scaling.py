"""Massive grids (issue 4): grid vs solo cost, per-round time vs N, peak memory vs the estimator.

  python benchmarks/grid_scaling.py                   # full size (~4-5 minutes on 2 CPU cores)
  python benchmarks/grid_scaling.py --quick           # smoke test (~1.5-2.5 minutes)
  python benchmarks/grid_scaling.py --out=grid.json   # also write the results as JSON

Each section runs in its own Python subprocess (`--child`), so that its compiles are cold and
its memory is measured from a fresh allocator. For every configuration the child builds the
grid exactly as `fedqs_jax.run.train` does on one device (sweep points x seeds on the leading
axis G, `fedqs_jax.program.build_program`'s engine), then:

  1. compiles `engine.init` and `engine.run_chunk` ahead of time (`.lower(...).compile()`,
     timed), counting traces (`engine.traces`) and XLA backend compiles (`jax.monitoring`'s
     `/jax/core/compile/backend_compile_duration` events): the jitted calls below must
     reuse these executables (no further trace or compile);
  2. trims the heap (`malloc_trim`; the child runs with a fixed glibc mmap threshold, 1 MiB,
     so that large allocations get their own mappings, returned to the system when freed),
     reads VmRSS and resets the peak-RSS mark (`/proc/self/clear_refs` = 5);
  3. runs `engine.init` (the version-0 dispatch of every client) and `warmup` chunks through
     the ordinary jitted calls, fetching each chunk's evaluation like `train`;
  4. reads VmHWM: the measured peak is VmHWM - the VmRSS of step 2, every byte the process
     touched for the grid's state and for the transients of init and of a chunk (data,
     schedule, initial parameters and executables were allocated before step 2).

Then the configurations are timed in interleaved repetitions: per repetition, each runs a
block of chunks (wall and process CPU time, after `block_until_ready`), replaying the same
rounds (`state.round` is reset, so every configuration does the same work in every
repetition). Ratios are paired per repetition and the median is reported, so that the load
of a shared machine hits the compared configurations alike.

Sections:

  grid   digits, N = 100, Dirichlet 0.1, semi_async K = 10, MLP (64), batch 32, 2 local
         epochs, FedAvg, one seed; a sweep of G log-spaced learning rates in [0.02, 0.2]
         (`config.sweep.local.lr`), G = 1, 8, 64. All points share the seed, hence the schedule
         and the local step counts: the grid does exactly G times the solo work. Blocks
         hold 64 / G chunks, the same work for every G. Solo baseline: the G = 1 run, the
         grid's first point alone (two more points of the 64-point sweep are timed on the
         same executable: the cost does not depend on the point). Targets: per-round time
         of the 64-point grid <= 1.2 x 64 x solo; one compile per grid.
  clients  per-round time vs N = 200, 1,000, 10,000 at K = 10 (semi_async), the same MLP,
         FedAvg, one point. Data: LEAF Synthetic(1, 1): every client has its own 50..500
         examples, so the per-client work does not change with N (digits' 1,437 training
         examples would leave at least 85% of 10,000 clients empty, and rounds would get
         cheaper as N grows). Local training uses `local.steps = 10` (every client does the
         same work) and the test set is cut to its first 2,048 examples (LEAF moves 20% of
         every client's data to the test set, which would make the evaluation, and its
         unrolled compile, grow with N). What grows with N is the state, N payload slots
         (semi_async keeps every client busy), and the data. Target: flat per-round time.
  memory the estimator (`fedqs_jax.program.memory_estimate`, G x per point) against the
         measured peak of every configuration above and of FedQS-Avg at the largest N
         (its [N, P] client state), with the exact state bytes (`SimState` arrays) and
         XLA's buffer assignment (`compiled.memory_analysis()`) of init and of the chunk.
         Target: estimate within 20% of the measured peak (estimates of at least 128 MiB;
         smaller ones are dominated by the runtime's own allocations).

Observed (full mode, the shared 2-core CPU at load average 4-6, jax 0.10.2):

  grid     the 64-point grid costs 0.95 x (CPU time 0.94 x) 64 solo runs per round, G = 8
           0.90 x; one trace and one compile per grid, 10-20 s whatever G (so 64 points take
           ~85 s end to end for 300 rounds vs ~26 s for one point, and ~28 min as 64 solo
           processes).
  clients  N = 1,000: 1.1 x the N = 200 round time; N = 10,000: 2.3-2.9 x with 10-round
           chunks, 1.6 x with 50-round chunks (`--chunk=50`): MISS. The cost that grows
           with N is paid once per chunk: `Engine._isolate_failure` keeps the chunk's start
           state, so XLA copies the donated state (N payload slots) into the scan carry and
           selects between start and end state after it (visible in the optimised HLO),
           O(N P) per chunk, ~0.2-0.3 s at N = 10,000 here.
  memory   estimate / measured peak RSS: 0.91 (G = 64), 0.68 (N = 10,000 FedAvg), 0.71
           (FedQS-Avg): MISS at N = 10,000. The version-0 dispatch of 10,000 clients needs
           ~24% more scratch than the estimated 4P per client (XLA's temp; the batch
           activations are not counted), and the process RSS peaks ~250 MiB above XLA's
           buffer assignment. Against XLA's buffer assignment the estimate is within 6-16%.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Any

from common import compilation_cache, loadavg, table, version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT = "GRID_SCALING_RESULT "  # prefix of the child's result line

TARGETS = {"grid_ratio": 1.2, "clients_flat": 1.2, "memory_rel_error": 0.2}
LR_RANGE = (0.02, 0.2)
SYNTHETIC_TEST_CAP = 2048
MEMORY_FLOOR = 128 * 2**20  # smaller estimates are dominated by the runtime's own allocations

# Table headers.
CLIENTS_HEADER = (
  "N|train ex.|empty|slots|compile s|init compile s|init run s|round ms|(cpu)|vs N0 (min-max)"
  "|(cpu)|state MiB"
).split("|")
MEMORY_HEADER = (
  "run|est. state|est. working|estimate|live state|RSS kept|XLA init|XLA chunk|peak RSS"
  "|est./peak|est./XLA"
).split("|")
GRID_HEADER = (
  "G|compile s|init compile s|init run s|traces/recompiles|round ms|per-point ms|(cpu)"
  "|vs G x solo (min-max)|(cpu)"
).split("|")
E2E_HEADER = (
  "G|grid s|G solo processes s|G solo in one process s|grid/processes|grid/one process".split("|")
)


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--grid_sizes", default="1,8,64", help="G of the grid section")
  p.add_argument("--clients", default="200,1000,10000", help="N of the clients section")
  p.add_argument("--chunk", type=int, default=10, help="rounds per engine call")
  p.add_argument("--chunks", type=int, default=5, help="distinct chunks the repetitions cycle over")
  p.add_argument("--warmup", type=int, default=1, help="unmeasured chunks after the compile")
  p.add_argument("--reps", type=int, default=5, help="interleaved timing repetitions")
  p.add_argument("--clients_block", type=int, default=3, help="chunks per timing block (N)")
  p.add_argument("--buffer_size", type=int, default=10, help="K")
  p.add_argument("--skip", default="", help="comma-separated sections to skip: grid,clients,fedqs")
  p.add_argument("--quick", action="store_true", help="small sizes for a smoke test")
  p.add_argument("--out", default="", help="write the results to this JSON file")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)  # internal: a job (JSON)
  args = p.parse_args(argv)
  if args.quick:
    args.grid_sizes, args.clients, args.chunks, args.reps = "1,8", "200,2000", 3, 3
    args.clients_block = 2
    args.skip = ",".join(filter(None, [args.skip, "fedqs"]))
  return args


# ---------------------------------------------------------------------------
# The child: one job (a section's configurations), each built like `fedqs_jax.run.train`.


def proc_status() -> dict[str, int]:
  """VmRSS and VmHWM of this process, in bytes."""
  with open("/proc/self/status") as f:
    text = f.read()
  return {k: 1024 * int(re.search(rf"{k}:\s+(\d+)", text).group(1)) for k in ("VmRSS", "VmHWM")}


def reset_peak() -> bool:
  """Trims the heap and resets VmHWM to the current VmRSS; False if the kernel refuses."""
  gc.collect()
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except OSError:
    pass
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def memory_stats(compiled) -> dict[str, int] | None:
  """XLA's `memory_analysis()` of a compiled program (None if the backend gives none)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - optional
    return None
  if m is None:
    return None
  keys = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes")
  out = {k.replace("_size_in_bytes", ""): int(getattr(m, k, 0)) for k in keys}
  out["temp"] = int(getattr(m, "temp_size_in_bytes", 0))
  # What the program needs at once: its inputs, its outputs not aliased onto donated
  # inputs, and its scratch (XLA's buffer assignment).
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


def child_config(spec: dict):
  from experiments.configs import default

  c = default.get_config()
  c.algorithms = spec["algorithm"]
  c.num_seeds = 1
  c.data.name = spec["dataset"]
  c.data.num_clients = spec["num_clients"]
  c.data.validation_fraction = 0.2 if spec["algorithm"].startswith("fedqs") else 0.0
  c.schedule.num_rounds = spec["chunk"] * (spec["warmup"] + spec["chunks"])
  c.schedule.buffer_size = spec["buffer_size"]
  c.local.steps = spec["steps"]
  c.engine.eval_every = spec["chunk"]
  c.sweep.local.lr = ",".join(f"{v:.6g}" for v in spec["lrs"])
  return c


class Entry:
  """One configuration of a child: its grid built like `run.train` (one device), compiled
  ahead of time, initialised and warmed up under a peak-RSS measurement."""

  def __init__(self, spec: dict, compiles: list[float]):
    import jax
    import numpy as np

    from fedqs_jax import config as config_lib
    from fedqs_jax import data as data_lib
    from fedqs_jax import memory, program

    self.spec, out = spec, {"spec": spec}
    self.out = out
    built = time.perf_counter()
    config = child_config(spec)
    config_lib.validate(config)
    t0 = time.perf_counter()
    data = data_lib.load(config.data, config.data.seed)
    if spec["test_cap"] and data.x_test.shape[0] > spec["test_cap"]:
      cap = spec["test_cap"]
      data = data.replace(x_test=data.x_test[:cap], y_test=data.y_test[:cap])
    sched = program.make_schedule(config)
    jax.block_until_ready((data, sched))
    out["data_schedule_s"] = time.perf_counter() - t0
    out["data"] = {
      "train": int(data.x_train.shape[0]),
      "test": int(data.x_test.shape[0]),
      "clients": data.num_clients,
      "empty_clients": int(np.sum(np.asarray(data.client_count) == 0)),
      "max_client_size": data.max_client_size,
      "slots": sched.num_slots,
    }
    # The grid, as `run.train` builds it (one device: no padding, no sharding).
    prog = program.build_program(config, spec["algorithm"], data, sched.num_slots)
    estimate = program.memory_estimate(prog, data, sched)
    seeds = config_lib.seeds(prog.config)
    grid = [(point, s) for point in prog.points for s in range(len(seeds))]
    seed_index = np.array([s for _, s in grid])
    hparams = prog.grid_hparams([p for p, _ in grid])
    sched = jax.tree.map(lambda x: x[seed_index], sched)
    grid_seeds = [seeds[s] for s in seed_index]
    init_keys = program.seed_keys(grid_seeds, program.INIT_STREAM)
    train_keys = program.seed_keys(grid_seeds, program.TRAIN_STREAM)
    engine = prog.engine
    params = jax.vmap(lambda k: prog.model.init(k, data.x_train[:1]))(init_keys)
    events = sched.events()
    init_args = (train_keys, params, sched.init_client, sched.init_slot, sched.init_mask)
    jax.block_until_ready((params, events, hparams))
    param_bytes = memory.tree_bytes(jax.tree.map(lambda x: x[0], params))
    working = len(grid) * estimate["per_point_training"]  # the local-training working set
    out["grid_size"] = len(grid)
    out["estimate"] = {**estimate, "working_set": working, "state": estimate["grid"] - working}
    out["param_bytes"] = param_bytes
    self.engine, self.events, self.data, self.hparams = engine, events, data, hparams
    self.init_args = init_args

    # 1. Ahead-of-time compiles (the jitted calls below reuse them: no further compile).
    n = len(compiles)
    t0 = time.perf_counter()
    init_compiled = engine.init.lower(*init_args, hparams, data).compile()
    out["init_compile_s"] = time.perf_counter() - t0
    state_shape = jax.eval_shape(engine.init, *init_args, hparams, data)
    t0 = time.perf_counter()
    lowered = engine.run_chunk.lower(state_shape, events, hparams, data)
    out["chunk_lower_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    chunk_compiled = lowered.compile()
    out["chunk_compile_s"] = time.perf_counter() - t0
    out["aot_compiles"] = len(compiles) - n
    out["xla_memory"] = {"init": memory_stats(init_compiled), "chunk": memory_stats(chunk_compiled)}
    del lowered, init_compiled, chunk_compiled

    # 2. Baseline memory; 3. init and warm-up chunks through the jitted entry points.
    out["peak_reset"] = reset_peak()
    before = proc_status()["VmRSS"]
    n = len(compiles)
    t0 = time.perf_counter()
    self.state = jax.block_until_ready(engine.init(*init_args, hparams, data))
    out["init_run_s"] = time.perf_counter() - t0
    out["state_live_bytes"] = sum(x.nbytes for x in jax.tree.leaves(self.state))
    warm = []
    for _ in range(spec["warmup"]):
      t0 = time.perf_counter()
      self.chunk()
      warm.append(time.perf_counter() - t0)
    out["warmup_chunk_s"] = warm
    # 4. The peak.
    status = proc_status()
    out["rss_before"], out["rss_after"] = before, status["VmRSS"]
    out["peak_delta"] = status["VmHWM"] - before
    out["traces"] = engine.traces
    out["compiles_after_aot"] = len(compiles) - n
    self.start_round = spec["chunk"] * spec["warmup"]
    self.wall, self.cpu = [], []
    out["build_s"] = time.perf_counter() - built

  def chunk(self, round_: int | None = None) -> None:
    """One `run_chunk` call as `train` makes it (evaluation fetched); from `round_` if given."""
    import jax
    import numpy as np

    if round_ is not None:  # replay rounds [round_, round_ + chunk): the same work again
      r = self.state.round
      self.state = self.state.replace(round=jax.device_put(np.full(r.shape, round_, r.dtype)))
    self.state, per_round, evaluation = self.engine.run_chunk(
      self.state, self.events, self.hparams, self.data
    )
    jax.device_get(evaluation)
    jax.block_until_ready(self.state)

  def measure(self, rep: int, replays: int) -> None:
    """Times `replays` runs of measured chunk `rep % chunks` back to back (wall, process CPU)."""
    round_ = self.start_round + self.spec["chunk"] * (rep % self.spec["chunks"])
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(replays):
      self.chunk(round_)
    rounds = replays * self.spec["chunk"]
    self.wall.append((time.perf_counter() - t0) / rounds)
    self.cpu.append((time.process_time() - c0) / rounds)

  def result(self) -> dict:
    self.out["round_wall_s"] = self.wall
    self.out["round_cpu_s"] = self.cpu
    self.out["traces_end"] = self.engine.traces
    return self.out


def solo_variant(entry: Entry, lr: float, label: str) -> Entry:
  """`entry` (a one-point grid) at another learning rate, on the same compiled program."""
  import copy

  import jax
  import numpy as np

  other = copy.copy(entry)
  other.spec = {**entry.spec, "label": label, "lrs": [lr]}
  other.out = {"spec": other.spec, "grid_size": 1}
  shape = entry.hparams["lr"].shape
  other.hparams = dict(entry.hparams, lr=jax.device_put(np.full(shape, lr, np.float32)))
  other.state = jax.block_until_ready(
    entry.engine.init(*entry.init_args, other.hparams, entry.data)
  )
  for _ in range(entry.spec["warmup"]):
    other.chunk()
  other.wall, other.cpu = [], []
  return other


def run_child(job: dict) -> dict:
  """Builds every configuration of `job`, then times them in interleaved repetitions.

  `job["configs"]`: specs; `job["replays"][i]`: chunks per timing block of config i (equal
  work per block across configs, so machine noise hits them alike); `job["solo_lrs"]`:
  extra learning rates run on the first config's compiled program.
  """
  import jax

  compiles: list[float] = []
  jax.monitoring.register_event_duration_secs_listener(
    lambda name, secs, **kw: (
      compiles.append(secs) if name == "/jax/core/compile/backend_compile_duration" else None
    )
  )
  started = time.perf_counter()
  out: dict[str, Any] = {"loadavg_start": loadavg()}
  entries = []
  for spec in job["configs"]:
    entries.append(Entry(spec, compiles))
    print(f"  [{spec['label']}: built in {entries[-1].out['build_s']:.1f} s]", file=sys.stderr,
          flush=True)  # fmt: skip
  replays = list(job["replays"])
  for lr in job.get("solo_lrs", []):
    entries.append(solo_variant(entries[0], lr, f"{entries[0].spec['label']} lr={lr:.3g}"))
    replays.append(job.get("solo_replays", replays[0]))
  n = len(compiles)
  out["build_s"] = time.perf_counter() - started
  for rep in range(job["reps"]):
    for entry, m in zip(entries, replays, strict=True):
      entry.measure(rep, m)
  out["compiles_during_timing"] = len(compiles) - n
  out["child_s"] = time.perf_counter() - started
  out["entries"] = [e.result() for e in entries]
  out["loadavg_end"] = loadavg()
  return out


# ---------------------------------------------------------------------------
# The parent: specs, subprocesses, report.


def lr_values(size: int) -> list[float]:
  import numpy as np

  return [float(v) for v in np.geomspace(*LR_RANGE, size)] if size > 1 else [LR_RANGE[0]]


def spawn(label: str, job: dict) -> dict:
  """Runs one job (`run_child`) in a fresh interpreter; returns its result dict."""
  env = dict(os.environ)
  env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)  # allocations >= 1 MiB: own mappings
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(job)]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env, check=False)
  lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT)]
  if proc.returncode != 0 or not lines:
    sys.stderr.write(proc.stdout[-4000:])
    raise SystemExit(f"child {label} failed (exit {proc.returncode})")
  result = json.loads(lines[-1][len(RESULT) :])
  result["process_s"] = time.perf_counter() - t0
  print(f"  [{label}: {result['process_s']:.1f} s]", file=sys.stderr, flush=True)
  return result


def base_spec(args, **kw) -> dict:
  spec = dict(
    dataset="digits",
    num_clients=100,
    algorithm="fedavg",
    lrs=[LR_RANGE[0]],
    chunk=args.chunk,
    chunks=args.chunks,
    warmup=args.warmup,
    buffer_size=args.buffer_size,
    steps=0,
    test_cap=0,
  )
  spec.update(kw)
  return spec


def mib(x: float | None) -> str:
  return "-" if x is None else f"{x / 2**20:,.1f}"


def verdict(ok: bool) -> str:
  return "PASS" if ok else "MISS"


def median(xs: list[float]) -> float:
  return statistics.median(xs) if xs else float("nan")


def compile_s(r: dict) -> float:
  return r["chunk_lower_s"] + r["chunk_compile_s"]


def grid_section(args, report: list[str]) -> dict:
  sizes = sorted(int(g) for g in args.grid_sizes.split(","))
  largest = sizes[-1]
  sweep = lr_values(largest)
  configs = [base_spec(args, label=f"G={g}", lrs=lr_values(g)) for g in sizes]
  job = {
    "configs": configs,
    "replays": [largest // g for g in sizes],  # the same work (largest x chunk) per block
    "reps": args.reps,
    "solo_lrs": [sweep[len(sweep) // 2], sweep[-1]] if sizes[0] == 1 and largest > 1 else [],
    "solo_replays": max(largest // 8, 1),
  }
  child = spawn("grid", job)
  entries = child["entries"]
  runs = {g: entries[i] for i, g in enumerate(sizes)}
  solos = [entries[0], *entries[len(sizes) :]] if sizes[0] == 1 else [entries[0]]
  g0 = sizes[0]
  # Paired per repetition: the grid's per-round time over G x the solo per-point time.
  rows = []
  for g, r in runs.items():
    wall = [w / (g / g0 * s) for w, s in zip(r["round_wall_s"], runs[g0]["round_wall_s"],
                                              strict=True)]  # fmt: skip
    cpu = [w / (g / g0 * s) for w, s in zip(r["round_cpu_s"], runs[g0]["round_cpu_s"],
                                             strict=True)]  # fmt: skip
    r["ratio"], r["cpu_ratio"] = median(wall), median(cpu)
    r["ratio_range"] = [min(wall), max(wall)]
    rows.append([
      g, f"{compile_s(r):.1f}", f"{r['init_compile_s']:.1f}", f"{r['init_run_s']:.2f}",
      f"{r['traces']}/{r['compiles_after_aot']}", f"{1e3 * median(r['round_wall_s']):.2f}",
      f"{1e3 * median(r['round_wall_s']) / g:.3f}", f"{1e3 * median(r['round_cpu_s']) / g:.3f}",
      f"{r['ratio']:.2f} ({min(wall):.2f}-{max(wall):.2f})", f"{r['cpu_ratio']:.2f}",
    ])  # fmt: skip
  solo_text = ", ".join(
    f"lr={e['spec']['lrs'][0]:.3g}: {1e3 * median(e['round_wall_s']):.2f} ms" for e in solos
  )
  t1 = median(runs[g0]["round_wall_s"]) / g0
  rounds = 300  # the default config's run length, for the end-to-end extrapolation
  first = runs[g0]
  compile_1 = compile_s(first) + first["init_compile_s"]
  e2e = []
  for g, r in runs.items():
    grid_s = compile_s(r) + r["init_compile_s"] + rounds * median(r["round_wall_s"])
    procs_s = g / g0 * (compile_1 + rounds * median(first["round_wall_s"]))
    one_s = compile_1 + g * rounds * t1
    e2e.append([g, f"{grid_s:.1f}", f"{procs_s:.1f}", f"{one_s:.1f}", f"{grid_s / procs_s:.2f}",
                f"{grid_s / one_s:.2f}"])  # fmt: skip
    r["e2e"] = {"grid_s": grid_s, "solo_processes_s": procs_s, "solo_one_process_s": one_s}
  report.append(
    "== 1. grid vs solo: digits N=100, semi_async K=10, MLP(64), FedAvg, lr sweep ==\n"
    + table(GRID_HEADER, rows)
    + "\n   compile s = lower + XLA compile of run_chunk (AOT); init = engine.init (the version-0"
    "\n   dispatch of all N clients): compile, then first run. traces/recompiles = engine.traces"
    "\n   / XLA compiles during init + warm-up chunks after the AOT compiles (1/0: one compile)."
    f"\n   round ms: median over {args.reps} interleaved repetitions of a block of {largest}/G"
    f"\n   replays of one {args.chunk}-round chunk (the same work, {largest} point-chunks, per"
    "\n   block, so that machine noise hits every G alike) / rounds; per-point = round / G;"
    f"\n   'vs G x solo' = the grid's round time / (G x the G={g0} per-point time), paired per"
    "\n   repetition; (cpu): the same with process CPU time."
    + f"\n   solo points (one compiled program, only lr differs): {solo_text}"
    + f"\n   recompiles while timing: {child['compiles_during_timing']}"
    f"\n   end to end, {rounds} rounds (compile + init compile + {rounds} x round; extrapolated):\n"
    + table(E2E_HEADER, e2e)
  )
  big = runs[largest]
  return {
    "child": child,
    "runs": runs,
    "ratio": big["ratio"],
    "cpu_ratio": big["cpu_ratio"],
    "one_compile": all(
      r["traces"] == 1 and r["traces_end"] == 1 and r["compiles_after_aot"] == 0
      and r["aot_compiles"] == 2 for r in runs.values()
    ) and child["compiles_during_timing"] == 0,
  }  # fmt: skip


def clients_section(args, report: list[str], fedqs: bool) -> dict:
  sizes = sorted(int(n) for n in args.clients.split(","))
  synthetic = dict(dataset="synthetic", steps=10, test_cap=SYNTHETIC_TEST_CAP)
  configs = [base_spec(args, label=f"N={n}", num_clients=n, **synthetic) for n in sizes]
  if fedqs:  # the same, with FedQS's [N, P] client state (for the memory section)
    label = f"fedqs_avg N={sizes[-1]}"
    configs.append(
      base_spec(args, label=label, num_clients=sizes[-1], algorithm="fedqs_avg", **synthetic)
    )
  job = {"configs": configs, "replays": [args.clients_block] * len(configs), "reps": args.reps}
  child = spawn("clients", job)
  runs = {n: child["entries"][i] for i, n in enumerate(sizes)}
  base = runs[sizes[0]]
  rows = []
  for n, r in runs.items():
    wall = [a / b for a, b in zip(r["round_wall_s"], base["round_wall_s"], strict=True)]
    cpu = [a / b for a, b in zip(r["round_cpu_s"], base["round_cpu_s"], strict=True)]
    r["ratio"], r["cpu_ratio"] = median(wall), median(cpu)
    d = r["data"]
    rows.append([
      n, f"{d['train']:,}", d["empty_clients"], d["slots"], f"{compile_s(r):.1f}",
      f"{r['init_compile_s']:.1f}", f"{r['init_run_s']:.2f}",
      f"{1e3 * median(r['round_wall_s']):.2f}", f"{1e3 * median(r['round_cpu_s']):.2f}",
      f"{r['ratio']:.2f} ({min(wall):.2f}-{max(wall):.2f})", f"{r['cpu_ratio']:.2f}",
      mib(r["state_live_bytes"]),
    ])  # fmt: skip
  extra = child["entries"][len(sizes) :]
  fedqs_text = "".join(
    f"\n   {e['spec']['label']}: round {1e3 * median(e['round_wall_s']):.2f} ms (cpu "
    f"{1e3 * median(e['round_cpu_s']):.2f}), state {mib(e['state_live_bytes'])} MiB"
    for e in extra
  )
  header = [f"vs N={sizes[0]} (min-max)" if h == "vs N0 (min-max)" else h for h in CLIENTS_HEADER]
  report.append(
    "== 2. per-round time vs N: LEAF Synthetic(1,1), semi_async K=10, MLP(64), FedAvg, "
    "10 local steps ==\n"
    + table(header, rows)
    + f"\n   test set cut to its first {SYNTHETIC_TEST_CAP} examples for every N. round ms: median"
    f"\n   over {args.reps} interleaved repetitions of a block of {args.clients_block} replays of"
    f"\n   one {args.chunk}-round chunk / rounds;"
    "\n   ratios paired per repetition. state MiB = the SimState (semi_async keeps every client"
    "\n   busy: N payload slots)." + fedqs_text
  )
  return {
    "child": child,
    "runs": runs,
    "extra": extra,
    "ratio": max(r["ratio"] for r in runs.values()),
    "cpu_ratio": max(r["cpu_ratio"] for r in runs.values()),
  }


def xla_own(r: dict, program: str) -> int | None:
  """XLA's peak of a program minus the shared inputs (data, schedule): the grid's share.

  init: its outputs (the new state) + scratch; chunk: the donated state + scratch.
  """
  m = r["xla_memory"][program]
  if m is None:
    return None
  if program == "init":
    return m["output"] + m["temp"]
  return r["state_live_bytes"] + m["temp"]


def memory_section(all_runs: list[dict], report: list[str]) -> dict:
  rows, errors, errors_xla = [], [], []
  small = [r for r in all_runs if r["estimate"]["grid"] < MEMORY_FLOOR] or all_runs
  overhead = max(r["rss_after"] - r["rss_before"] - r["state_live_bytes"] for r in small)
  for r in all_runs:
    est = r["estimate"]["grid"]
    peak = r["peak_delta"]
    xla = max(filter(None, [xla_own(r, "init"), xla_own(r, "chunk")]), default=None)
    r["memory_rel_error"] = est / peak - 1.0
    r["memory_rel_error_xla"] = est / xla - 1.0 if xla else None
    counted = est >= MEMORY_FLOOR
    if counted:
      errors.append(r["memory_rel_error"])
      if xla:
        errors_xla.append(r["memory_rel_error_xla"])
    rows.append([
      r["spec"]["label"] + ("" if counted else " *"), mib(r["estimate"]["state"]),
      mib(r["estimate"]["working_set"]), mib(est), mib(r["state_live_bytes"]),
      mib(r["rss_after"] - r["rss_before"]), mib(xla_own(r, "init")), mib(xla_own(r, "chunk")),
      mib(peak), f"{est / peak:.2f}", f"{est / xla:.2f}" if xla else "-",
    ])  # fmt: skip
  report.append(
    "== 3. peak memory vs the estimator (MiB) ==\n"
    + table(MEMORY_HEADER, rows)
    + "\n   estimate = program.memory_estimate(...)['grid'] = state (2P + slots x payload + client"
    "\n   and server state, exact) + working set (widest dispatch x (4P + one minibatch's"
    "\n   activations): the version-0 one, all N clients). live state = bytes of the SimState"
    "\n   arrays after init. RSS kept = VmRSS after init + warm-up chunk - VmRSS before init."
    "\n   XLA init = memory_analysis() output +"
    "\n   temp of engine.init; XLA chunk = state + temp of run_chunk (the grid's share: the"
    "\n   shared data and schedule excluded). peak RSS = VmHWM - VmRSS before init: the state"
    "\n   and every transient of init and of the chunk. est./peak, est./XLA: the estimate over"
    "\n   the measured peak and over XLA's larger program peak."
    "\n   RSS kept exceeds the live state by freed transients the allocator keeps resident"
    "\n   (malloc_trim returns them) and by the runtime's own allocations, up to"
    f"\n   {mib(overhead)} MiB in the small runs (*: estimate < {mib(MEMORY_FLOOR)} MiB), which"
    "\n   are dominated by it and not counted in the target."
  )
  worst = max(errors, key=abs) if errors else None
  worst_xla = max(errors_xla, key=abs) if errors_xla else None
  return {"worst_rel_error": worst, "worst_rel_error_xla": worst_xla,
          "runtime_overhead_bytes": overhead}  # fmt: skip


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  compilation_cache()  # a fresh temporary cache: the compiles it times stay cold
  if args.child:
    result = run_child(json.loads(args.child))
    print(RESULT + json.dumps(result), flush=True)
    return 0
  import jax
  import numpy as np

  start = time.perf_counter()
  skip = set(filter(None, args.skip.split(",")))
  env = {
    "devices": str(jax.devices()),
    "jax": jax.__version__,
    "jaxlib": version("jaxlib"),
    "flax": version("flax"),
    "numpy": np.__version__,
    "python": platform.python_version(),
    "cpu_count": os.cpu_count(),
    "loadavg_start": loadavg(),
  }
  results: dict[str, Any] = {"env": env, "args": vars(args), "targets": TARGETS}
  report = [
    "== environment ==\n"
    f"   devices {env['devices']}; jax {env['jax']} (jaxlib {env['jaxlib']}), flax "
    f"{env['flax']}, numpy {env['numpy']}; python {env['python']}; {env['cpu_count']} CPUs\n"
    f"   1-min load average at start {env['loadavg_start']} (this benchmark wants an idle "
    "machine); each section runs in its own subprocess"
  ]
  memory_runs = []
  if "grid" not in skip:
    results["grid"] = grid_section(args, report)
    memory_runs += list(results["grid"]["runs"].values())
  if "clients" not in skip:
    results["clients"] = clients_section(args, report, fedqs="fedqs" not in skip)
    memory_runs += list(results["clients"]["runs"].values()) + results["clients"]["extra"]
  if memory_runs:
    results["memory"] = memory_section(memory_runs, report)

  summary = []
  if "grid" in results:
    g = results["grid"]
    largest = max(int(x) for x in args.grid_sizes.split(","))
    summary.append(
      f"   grid G={largest}: {g['ratio']:.2f} x (G x solo) per round in wall time (<= "
      f"{TARGETS['grid_ratio']} {verdict(g['ratio'] <= TARGETS['grid_ratio'])}), "
      f"{g['cpu_ratio']:.2f} x in CPU time ({verdict(g['cpu_ratio'] <= TARGETS['grid_ratio'])});"
      f" one compile per grid {verdict(g['one_compile'])}"
    )
  if "clients" in results:
    c = results["clients"]
    summary.append(
      f"   per-round time vs N: at most {c['ratio']:.2f} x the smallest N's in wall time (flat: "
      f"<= {TARGETS['clients_flat']} {verdict(c['ratio'] <= TARGETS['clients_flat'])}), "
      f"{c['cpu_ratio']:.2f} x in CPU time "
      f"({verdict(c['cpu_ratio'] <= TARGETS['clients_flat'])})"
    )
  if "memory" in results:
    e = results["memory"]["worst_rel_error"]
    limit = TARGETS["memory_rel_error"]
    summary.append(
      "   memory: no run large enough to test the estimator"
      if e is None
      else f"   memory: estimate off the measured peak RSS by up to {100 * e:+.0f}% in the counted "
      f"runs (within {100 * limit:.0f}% {verdict(abs(e) <= limit)})"
    )
    x = results["memory"]["worst_rel_error_xla"]
    if e is not None and x is not None:
      summary.append(
        f"           off XLA's own buffer-assignment peak by up to {100 * x:+.0f}% "
        f"({verdict(abs(x) <= limit)})"
      )
  wall = time.perf_counter() - start
  env["loadavg_end"] = loadavg()
  results["wall_s"] = wall
  if (env["loadavg_end"] or 0) > (os.cpu_count() or 1) + 0.5:
    summary.append(
      f"   WARNING: 1-min load average {env['loadavg_end']} at the end on {os.cpu_count()} "
      "CPUs: other processes competed for the CPU, wall times are noisy"
    )
  report.append("== targets ==\n" + "\n".join(summary) + f"\n   total wall time {wall:.1f} s")
  print("\n\n".join(report), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=2, default=str)
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

"""Throughput of the training engine against Python-loop baselines, and of the schedule phase.

  python benchmarks/throughput.py                  # full size (a few minutes on 2 CPU cores)
  python benchmarks/throughput.py --quick          # smoke test (< 1 minute)
  python benchmarks/throughput.py --out=bench.json # also write the results as JSON

Workload (the paper's SAFL setting): digits, N = 100 clients, Dirichlet 0.1 partition (and
IID), semi_async schedule with K = 10 and latencies 1..50, batch 32, 2 local epochs, lr 0.1,
FedAvg, one seed. Every rate counts only *real* client steps: minibatch steps that touched at
least one example (the engine's `client_steps` metric); steps the engine executes on padding
(clients trained in lockstep with a larger one) are work it does but is not credited for.

Measured:

  1. engine throughput of the MLP in the default mode (vmap clients, scan rounds), timed chunk by
     chunk like `fedqs_jax.run.train` (it fetches every chunk's evaluation), after a compile
     chunk and a warm-up chunk; compile time = first chunk - median steady chunk;
  2. baseline (a): a Python loop of per-client jitted `engine.local_train` calls (one call per
     task) plus a jitted FedAvg per round, on the same schedule;
  3. baseline (b): a Python loop over clients and minibatches with one jitted optax SGD step
     per minibatch (host-side shuffling and batching, PyTorch style);
  4. achieved dense GFLOP/s against matmul reference peaks measured here;
  5. the small CNN in each execution mode against baseline (a);
  6. the schedule phase: arrivals per second of the jitted, seed-vmapped schedule simulation;
  7. the next-character LSTM of `experiments/configs/fedqs_shakespeare.py:cpu` (its data,
     model, schedule and local training, FedAvg, 3 seeds vmapped like the run) in each
     execution mode of `LSTM_MODES` against baselines (a) and (b), which train seed 0 alone;
     needs the Shakespeare plays in the cache (`fedqs_jax.data.shakespeare`), else
     `--skip=lstm`.

  python benchmarks/throughput.py --skip=mlp,cnn,schedule   # only the LSTM (~2 minutes)

The program (model functions, algorithm, hyperparameters, engine), schedule and initial state
are built by `fedqs_jax.program`, as `fedqs_jax.run.train` builds them; an execution mode is
set on the config before `build_program`. The baselines train the same model functions
(training mode: BatchNorm statistics, dropout) with the engine's local optimizer, start from
the engine's initial state (the version-0 tasks already trained) and run the first rounds of
the same schedule.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import lane_slots, loadavg, measure_schedule, table, timed, version

from experiments.configs import default as default_config
from fedqs_jax import config as config_lib
from fedqs_jax import data as data_lib
from fedqs_jax import program, schedule
from fedqs_jax.algorithms.base import local_task
from fedqs_jax.engine import cross_entropy, local_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_LATENCY_FILE = os.path.join(
  ROOT, "..", "shared", "data", "fedqs_resources", "resources_No_100_max_50.csv"
)


class Mode(NamedTuple):
  """An engine execution mode (`fedqs_jax.engine.ExecConfig` fields)."""

  client_mode: str = "vmap"
  round_mode: str = "scan"
  local_loop: str = "while"  # the engine's default; "scan" is needed for local_unroll
  local_unroll: int | bool = 1

  @property
  def label(self) -> str:
    unroll = "full" if self.local_unroll is True else str(self.local_unroll)
    local = self.local_loop + (f"(unroll {unroll})" if self.local_loop == "scan" else "")
    return f"{self.client_mode}/{self.round_mode}, local {local}"


DEFAULT_MODE = Mode()
# The CNN comparison: the unrolled modes also unroll the local steps (a scan, fully unrolled).
CNN_MODES = {
  "vmap/scan": Mode("vmap", "scan"),
  "map/scan": Mode("map", "scan"),
  "unroll/unroll": Mode("unroll", "unroll", "scan", True),
  "vmap/unroll": Mode("vmap", "unroll", "scan", True),
  "lanes/scan": Mode("lanes", "scan"),
}
MLP_MODES = {"vmap": DEFAULT_MODE, "lanes": Mode("lanes")}

TARGETS = {
  "dense_vs_a": 10.0,
  "dense_vs_b": 40.0,
  "cnn_best_vs_a": 1.0,
  "schedule_arrivals_per_s": 1e6,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--rounds", type=int, default=100, help="measured engine rounds (MLP)")
  p.add_argument("--chunk", type=int, default=10, help="rounds per engine call (MLP)")
  p.add_argument("--baseline_rounds", type=int, default=20, help="rounds of baselines (a), (b)")
  p.add_argument("--cnn_rounds", type=int, default=20, help="measured engine rounds per CNN mode")
  p.add_argument(
    "--cnn_chunk",
    type=int,
    default=2,
    help="rounds per engine call for every CNN mode (the fully unrolled modes compile in time "
    "roughly linear in it: ~15 s per round on 2 cores)",
  )
  p.add_argument("--cnn_modes", default=",".join(CNN_MODES), help="comma-separated CNN modes")
  p.add_argument("--partitions", default="dirichlet,iid", help="MLP partitions to measure")
  p.add_argument("--mlp_modes", default=",".join(MLP_MODES), help="comma-separated MLP modes")
  p.add_argument("--lstm_rounds", type=int, default=12, help="measured engine rounds per LSTM mode")
  p.add_argument("--lstm_chunk", type=int, default=4, help="rounds per engine call (LSTM)")
  p.add_argument(
    "--lstm_modes",
    default=",".join(LSTM_MODES),
    help=f"comma-separated LSTM modes, of {','.join(LSTM_MODES)}",
  )
  p.add_argument(
    "--lstm_seeds", type=int, default=3, help="seeds vmapped in the LSTM engine (the run's 3)"
  )
  p.add_argument("--schedule_rounds", type=int, default=2000, help="T of the schedule phase")
  p.add_argument("--schedule_seeds", type=int, default=64, help="seeds vmapped in one call")
  p.add_argument("--large_clients", type=int, default=10_000, help="N of the large schedule")
  p.add_argument("--latency_file", default=DEFAULT_LATENCY_FILE, help="tick protocol latencies")
  p.add_argument(
    "--skip", default="", help="comma-separated sections to skip: mlp,cnn,lstm,schedule"
  )
  p.add_argument("--quick", action="store_true", help="small sizes for a smoke test (< 1 min)")
  p.add_argument("--out", default="", help="write the results to this JSON file")
  args = p.parse_args(argv)
  if args.quick:
    args.rounds, args.chunk, args.baseline_rounds = 20, 10, 3
    args.cnn_rounds, args.cnn_chunk, args.cnn_modes = 2, 1, "vmap/scan,map/scan"
    args.lstm_rounds, args.lstm_chunk, args.lstm_modes = 4, 2, "vmap/scan"
    args.partitions = "dirichlet"
    args.schedule_rounds, args.schedule_seeds, args.large_clients = 200, 8, 1000
  return args


# ---------------------------------------------------------------------------
# Helpers.


def now() -> float:
  return time.perf_counter()


def copy_tree(tree):
  return jax.tree.map(jnp.copy, tree)


def fmt(x: float | None, digits: int = 0) -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "-"
  return f"{x:,.{digits}f}"


def verdict(value: float | None, target: float) -> str:
  if value is None:
    return "n/a"
  return "PASS" if value >= target else "MISS"


def xla_flops(fn, *args) -> float:
  """XLA's FLOP count of `fn(*args)` (NaN if the backend gives none)."""
  try:
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  except Exception:  # noqa: BLE001 - cost analysis is optional
    return float("nan")
  if isinstance(analysis, list | tuple):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", float("nan")))


# ---------------------------------------------------------------------------
# The workload: FedAvg's program (`fedqs_jax.program`), as `fedqs_jax.run.train` builds it.


@dataclasses.dataclass
class Workload:
  config: Any
  data: data_lib.FederatedData
  sched: schedule.Schedule
  model: program.ModelFns  # the program's model functions (what the engine trains)
  hparams: dict  # [G] each
  params: Any  # [G] initial global model
  init_state: Any = None  # [G] SimState after `engine.init` (version-0 tasks trained)
  init_seconds: float = float("nan")

  def engine(self, mode: Mode = DEFAULT_MODE, chunk: int = 10):
    """The program's engine in execution `mode`, `chunk` rounds per call."""
    c = self.config.copy_and_resolve_references()
    c.engine.update(mode._asdict())
    c.engine.eval_every = chunk
    return program.build_program(c, "fedavg", self.data, self.sched.num_slots).engine

  def task_steps(self, clients: np.ndarray) -> np.ndarray:
    """Real local steps of tasks of `clients`: E * ceil(n_i / B), or `local.steps`."""
    loc = self.config.local
    count = np.asarray(self.data.client_count)[clients]
    if loc.steps > 0:
      return np.where(count > 0, loc.steps, 0)
    return loc.epochs * -(-count // loc.batch_size)

  def executed_steps(self, engine, mode: Mode, start: int, stop: int) -> int:
    """Local-step slots the engine executes in rounds [start, stop), real or padding, all seeds.

    A scan runs the static maximum for every dispatched client; a while loop runs each
    client's own steps, but clients trained in lockstep all run the longest one's: the
    seeds are always vmapped, so under `vmap` every client of the round in every seed
    runs the longest of them, under `map`/`unroll` the k-th client of every seed runs the
    longest k-th client.
    """
    disp = np.asarray(self.sched.dispatch_client)[:, start:stop]  # [G, rounds, width]
    seeds, rounds, width = disp.shape
    if mode.local_loop == "scan":
      return int(seeds * rounds * width * engine.num_local_steps)
    mask = np.asarray(self.sched.dispatch_mask)[:, start:stop]
    steps = np.where(mask, self.task_steps(disp), 0)
    if mode.client_mode == "vmap":
      return int(seeds * width * steps.max(axis=(0, 2)).sum())
    if mode.client_mode == "lanes":
      return lane_slots(engine, steps)
    return int(seeds * steps.max(axis=0).sum())


def make_workload(model: str, partition: str, num_rounds: int) -> Workload:
  """The digits workload (`experiments/configs/default.py`) with `model` and `partition`."""
  c = default_config.get_config()
  c.model.name = model
  c.data.partition = partition
  return workload_from_config(c, num_rounds)


def workload_from_config(c, num_rounds: int, num_seeds: int = 1) -> Workload:
  """FedAvg on the data, model, schedule and local training of config `c` (changed in place)."""
  c.algorithms = "fedavg"
  c.num_seeds = num_seeds
  c.schedule.num_rounds = num_rounds
  c.engine.eval_every = 1  # validated here; engines set their own chunk
  config_lib.validate(c)
  data = data_lib.load(c.data, c.data.seed)
  sched = program.make_schedule(c)
  prog = program.build_program(c, "fedavg", data, sched.num_slots)
  seeds = config_lib.seeds(c)
  hparams = prog.grid_hparams([{}] * len(seeds))
  params = jax.vmap(lambda k: prog.model.init(k, data.x_train[:1]))(
    program.seed_keys(seeds, program.INIT_STREAM)
  )
  w = Workload(c, data, sched, prog.model, hparams, params)
  engine = w.engine()  # the default mode builds the initial state for every mode
  w.init_state, w.init_seconds = timed(
    engine.init,
    program.seed_keys(seeds, program.TRAIN_STREAM),
    params,
    sched.init_client,
    sched.init_slot,
    sched.init_mask,
    hparams,
    data,
  )
  return w


# ---------------------------------------------------------------------------
# 1, 5: the engine.


def measure_engine(w: Workload, rounds: int, chunk: int, mode: Mode = DEFAULT_MODE) -> dict:
  """Client-steps/s of `engine.run_chunk` over `rounds` rounds after compile + warm-up chunks."""
  engine = w.engine(mode, chunk)
  n_chunks = max(rounds // chunk, 1)
  assert w.sched.num_rounds >= (n_chunks + 2) * chunk, "schedule too short"
  state = copy_tree(w.init_state)

  def call(state, index):
    state, per_round, evaluation = engine.run_chunk(state, w.sched.events(), w.hparams, w.data)
    jax.device_get(evaluation)  # what `train` does after every chunk
    return state, per_round

  t0 = now()
  state, _ = call(state, 0)
  first = now() - t0
  state, _ = call(state, 1)  # warm-up
  times, steps = [], 0
  for i in range(n_chunks):
    t0 = now()
    state, per_round = call(state, 2 + i)
    jax.block_until_ready(state)
    times.append(now() - t0)
    steps += int(np.sum(per_round["client_steps"]))
  total = sum(times)
  executed = w.executed_steps(engine, mode, 2 * chunk, (2 + n_chunks) * chunk)
  return {
    "mode": mode.label,
    **mode._asdict(),
    "rounds": n_chunks * chunk,
    "chunk": chunk,
    "client_steps": steps,
    "seconds": total,
    "steps_per_s": steps / total,
    "compile_s": first - statistics.median(times),
    "first_chunk_s": first,
    "chunk_s_median": statistics.median(times),
    "useful_fraction": steps / executed,
    "traces": engine.traces,
  }


# ---------------------------------------------------------------------------
# 2, 3: the Python-loop baselines.


def host_start(w: Workload):
  """Global model and per-slot payloads of seed 0 after the version-0 dispatch (host copies)."""
  state = jax.tree.map(lambda x: x[0], w.init_state)
  payloads = [jax.tree.map(lambda x, s=s: x[s], state.payloads) for s in range(w.sched.num_slots)]
  return state.params, payloads, state.key


def schedule_rows(w: Workload, rounds: int):
  """Numpy views of seed 0's schedule: arrivals and dispatches of rounds [0, rounds)."""
  s = w.sched
  get = lambda x: np.asarray(x)[0, :rounds]  # noqa: E731
  counts = np.asarray(w.data.client_count)
  return {
    "arrival_slot": get(s.arrival_slot),
    "arrival_weight": counts[get(s.arrival_client)].astype(np.float32),
    "dispatch_client": get(s.dispatch_client).astype(np.int32),
    "dispatch_slot": get(s.dispatch_slot).astype(np.int32),
    "dispatch_mask": get(s.dispatch_mask),
  }


def dispatches(ev: dict, t: int):
  """(client, slot, real) of the tasks dispatched after round t."""
  return zip(ev["dispatch_client"][t], ev["dispatch_slot"][t], ev["dispatch_mask"][t], strict=True)


@jax.jit
def fedavg_aggregate(global_params, payloads: tuple, weights: jnp.ndarray):
  """w <- sum_i p_i w_i with p_i = n_i / sum n (the global model kept if every client is empty)."""
  total = jnp.sum(weights)
  p = weights / jnp.maximum(total, 1.0)
  mixed = jax.tree.map(lambda *xs: sum(pi * x for pi, x in zip(p, xs, strict=True)), *payloads)
  return jax.tree.map(lambda m, g: jnp.where(total > 0, m, g), mixed, global_params)


def baseline_a(w: Workload, rounds: int, mode: Mode = DEFAULT_MODE) -> dict:
  """One jitted `engine.local_train` call per client task, a jitted FedAvg per round.

  `mode.local_loop` and `mode.local_unroll` choose the local loop of `local_train`.
  """
  engine = w.engine(mode)
  hparams = jax.tree.map(lambda x: x[0], w.hparams)

  @jax.jit
  def local(params, client, key, version, slot, hparams, data):
    key = jax.random.fold_in(jax.random.fold_in(key, version), slot)
    trained, stats = engine.local_train(params, local_task(hparams), client, key, hparams, data)
    return trained, stats.steps

  params, payloads, key = host_start(w)
  ev = schedule_rows(w, rounds)
  k = ev["arrival_slot"].shape[1]

  # Compile both functions (results discarded).
  t0 = now()
  jax.block_until_ready(local(params, np.int32(0), key, np.int32(1), np.int32(0), hparams, w.data))
  jax.block_until_ready(fedavg_aggregate(params, tuple(payloads[:k]), ev["arrival_weight"][0]))
  compile_s = now() - t0

  steps = []
  t0 = now()
  for t in range(rounds):
    arriving = tuple(payloads[s] for s in ev["arrival_slot"][t])
    params = fedavg_aggregate(params, arriving, ev["arrival_weight"][t])
    version = np.int32(t + 1)
    for client, slot, real in dispatches(ev, t):
      if real:
        payloads[slot], n = local(params, client, key, version, slot, hparams, w.data)
        steps.append(n)
  jax.block_until_ready((params, payloads, steps))
  seconds = now() - t0
  total_steps = int(np.sum(jax.device_get(steps)))
  return {
    "rounds": rounds,
    "mode": f"local {mode.label.split('local ')[-1]}",
    **mode._asdict(),
    "client_steps": total_steps,
    "seconds": seconds,
    "steps_per_s": total_steps / seconds,
    "compile_s": compile_s,
    "calls": len(steps) + rounds,
  }


def baseline_b(w: Workload, rounds: int) -> dict:
  """Python loops over clients and minibatches, one jitted optax SGD step per minibatch.

  The step is the engine's: the model in training mode (dropout keyed per step, updated
  BatchNorm statistics merged into the parameters) and its local optimizer.
  """
  cfg = w.config.local
  b, epochs = cfg.batch_size, cfg.epochs
  opt = local_optimizer(cfg.lr, cfg.momentum, cfg.clip)

  def loss_fn(params, x, y, m, key):
    logits, model_state = w.model.train(params, x, key)
    return cross_entropy(logits, y, m), model_state

  @jax.jit
  def train_step(params, opt_state, x, y, m, key, step):
    (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params, x, y, m, jax.random.fold_in(key, step)
    )
    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return ({**params, **model_state} if model_state else params), opt_state, loss

  opt_init = jax.jit(opt.init)
  x_train, y_train = np.asarray(w.data.x_train), np.asarray(w.data.y_train)
  index, count = np.asarray(w.data.client_index), np.asarray(w.data.client_count)
  feature = x_train.shape[1:]
  rng = np.random.default_rng(0)

  def batches(client):
    """The client's minibatches, padded to `b` with a mask (one compiled shape)."""
    own = index[client, : count[client]]
    for _ in range(epochs):
      perm = own[rng.permutation(len(own))]
      for start in range(0, len(perm), b):
        sel = perm[start : start + b]
        m = np.zeros(b, np.float32)
        m[: len(sel)] = 1.0
        x = np.zeros((b, *feature), x_train.dtype)
        y = np.zeros(b, np.int32)
        x[: len(sel)], y[: len(sel)] = x_train[sel], y_train[sel]
        yield x, y, m

  params, payloads, key = host_start(w)
  ev = schedule_rows(w, rounds)
  k = ev["arrival_slot"].shape[1]

  t0 = now()
  x, y, m = next(batches(int(np.argmax(count))))
  jax.block_until_ready(train_step(params, opt_init(params), x, y, m, key, np.int32(0)))
  jax.block_until_ready(fedavg_aggregate(params, tuple(payloads[:k]), ev["arrival_weight"][0]))
  compile_s = now() - t0

  steps = 0
  t0 = now()
  for t in range(rounds):
    arriving = tuple(payloads[s] for s in ev["arrival_slot"][t])
    params = fedavg_aggregate(params, arriving, ev["arrival_weight"][t])
    for client, slot, real in dispatches(ev, t):
      if not real:
        continue
      local, opt_state = params, opt_init(params)
      for x, y, m in batches(client):
        local, opt_state, _ = train_step(local, opt_state, x, y, m, key, np.int32(steps))
        steps += 1
      payloads[slot] = local
  jax.block_until_ready((params, payloads))
  seconds = now() - t0
  return {
    "rounds": rounds,
    "client_steps": steps,
    "seconds": seconds,
    "steps_per_s": steps / seconds,
    "compile_s": compile_s,
  }


# ---------------------------------------------------------------------------
# 4: FLOPs and reference peaks.


def mlp_step_flops(params, batch_size: int) -> float:
  """Forward + backward of a dense net: ~3 x 2 x (sum of kernel in*out) x batch."""
  macs = sum(
    int(np.prod(leaf.shape[-2:]))
    for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    if "kernel" in jax.tree_util.keystr(path)
  )
  return 3.0 * 2.0 * macs * batch_size


def model_step_flops(w: Workload) -> float:
  """~3 x XLA's training-mode forward FLOPs on one minibatch (any model)."""
  params = jax.tree.map(lambda x: x[0], w.params)
  x = jnp.zeros((w.config.local.batch_size, *w.data.feature_shape), w.data.x_train.dtype)
  key = jax.random.PRNGKey(0)
  return 3.0 * xla_flops(lambda p, x: w.model.train(p, x, key)[0], params, x)


def matmul_peaks(quick: bool) -> dict:
  """GFLOP/s of a large matmul and of loops of the MLP's small matmuls."""
  key = jax.random.PRNGKey(0)
  out = {}

  n, reps = (512, 5) if quick else (1024, 20)
  a = jax.random.normal(key, (n, n), jnp.float32)
  bm = jax.random.normal(jax.random.fold_in(key, 1), (n, n), jnp.float32)
  mm = jax.jit(jnp.matmul)
  jax.block_until_ready(mm(a, bm))
  t0 = now()
  for _ in range(reps):
    r = mm(a, bm)
  jax.block_until_ready(r)
  out[f"matmul {n}x{n} f32"] = 2.0 * n**3 * reps / (now() - t0) / 1e9

  iters = 200 if quick else 2000
  ortho = lambda k, shape: jnp.linalg.qr(jax.random.normal(k, shape))[0]  # noqa: E731

  @jax.jit
  def chain_flat(x, wm):  # [K*B, 64] @ [64, 64], dependent iterations (like a scan body)
    return jax.lax.fori_loop(0, iters, lambda i, x: x @ wm, x)

  @jax.jit
  def chain_batched(x, wm):  # per-client weights: [K, B, 64] @ [K, 64, 64]
    return jax.lax.fori_loop(0, iters, lambda i, x: jnp.einsum("kbi,kij->kbj", x, wm), x)

  for name, fn, x, wm in (
    ("loop [320,64]x[64,64]", chain_flat, jnp.ones((320, 64)), ortho(key, (64, 64))),
    (
      "loop [10,32,64]x[10,64,64]",
      chain_batched,
      jnp.ones((10, 32, 64)),
      ortho(key, (10, 64, 64)),
    ),
  ):
    jax.block_until_ready(fn(x, wm))
    _, sec = timed(fn, x, wm)
    out[name] = 2.0 * 320 * 64 * 64 * iters / sec / 1e9
  return out


# ---------------------------------------------------------------------------
# 6: the schedule phase.


def schedule_section(args) -> tuple[list[dict], list[str]]:
  results, notes = [], []
  t, k = args.schedule_rounds, 10
  c = default_config.get_config()
  results.append(
    measure_schedule(config_lib.time_model(c), "semi_async", t, k, args.schedule_seeds)
  )
  if os.path.isfile(args.latency_file):
    c = default_config.get_config()
    c.time.latency_file = args.latency_file
    # The tick loop is deterministic: it ignores the key, so vmapping over seeds would compute
    # one schedule and broadcast it. Measure one seed.
    results.append(measure_schedule(config_lib.time_model(c), "tick", t, k, 1))
    notes.append("tick: deterministic (ignores the seed), so measured with 1 seed, not vmapped")
  else:
    notes.append(f"tick: skipped, latency file not found: {os.path.normpath(args.latency_file)}")
  c = default_config.get_config()
  c.data.num_clients = args.large_clients
  results.append(
    measure_schedule(config_lib.time_model(c), "semi_async", t, k, args.schedule_seeds)
  )
  return results, notes


# ---------------------------------------------------------------------------
# Sections and report.


def mlp_section(args, peaks, report) -> dict:
  mlp_modes = [m for m in args.mlp_modes.split(",") if m]
  unknown = [m for m in mlp_modes if m not in MLP_MODES]
  if unknown:
    raise SystemExit(f"unknown --mlp_modes {unknown}; expected some of {list(MLP_MODES)}")
  out = {}
  rows = []
  b = default_config.get_config().local.batch_size
  for partition in [p for p in args.partitions.split(",") if p]:
    total_rounds = (args.rounds // args.chunk + 2) * args.chunk
    w = make_workload("mlp", partition, max(total_rounds, args.baseline_rounds))
    flops = mlp_step_flops(jax.tree.map(lambda x: x[0], w.params), b)
    engines = {m: measure_engine(w, args.rounds, args.chunk, MLP_MODES[m]) for m in mlp_modes}
    eng = max(engines.values(), key=lambda r: r["steps_per_s"])  # the ratios' engine
    a = baseline_a(w, args.baseline_rounds)
    bb = baseline_b(w, args.baseline_rounds)
    counts = np.asarray(w.data.client_count)
    res = {
      "flops_per_step": flops,
      "init_s": w.init_seconds,
      "client_sizes": {
        "min": int(counts.min()),
        "max": int(counts.max()),
        "mean": float(counts.mean()),
        "empty": int((counts == 0).sum()),
      },
      "engine": eng,
      "engines": engines,
      "a": a,
      "b": bb,
      "engine_vs_a": eng["steps_per_s"] / a["steps_per_s"],
      "engine_vs_b": eng["steps_per_s"] / bb["steps_per_s"],
    }
    for r in (*engines.values(), a, bb):
      r["gflops"] = r["steps_per_s"] * flops / 1e9
    for r in engines.values():
      r["gflops_executed"] = r["gflops"] / r["useful_fraction"]
    out[partition] = res
    peak = peaks.get("matmul 1024x1024 f32") or max(peaks.values(), default=float("nan"))

    def row(label, r, ratio=None, target=None, peak=peak, partition=partition, res=res):
      """One table row; `ratio`/`target` name the engine-vs-this-runner comparison."""
      head = [partition, label, str(r["rounds"]), fmt(r["client_steps"]), fmt(r["steps_per_s"])]
      head += [fmt(r["gflops"], 2), fmt(100 * r["gflops"] / peak, 1), fmt(r["compile_s"], 2)]
      if ratio is None:
        return head + ["", "", ""]
      t = TARGETS[target]
      return head + [f"{res[ratio]:.1f}x", f">={t:.0f}x", verdict(res[ratio], t)]

    rows += [
      *[row(f"engine {r['mode']}", r) for r in engines.values()],
      row("(a) per-client jit loop", a, "engine_vs_a", "dense_vs_a"),
      row("(b) per-step jit loop", bb, "engine_vs_b", "dense_vs_b"),
    ]
    print(f"  [mlp {partition} done]", file=sys.stderr, flush=True)
  header = [
    "partition",
    "runner",
    "rounds",
    "steps",
    "steps/s",
    "GFLOP/s",
    "%peak",
    "compile s",
    "engine/x",
    "target",
    "ok",
  ]
  report.append(
    "== MLP (hidden 64): engine vs Python-loop baselines ==\n"
    "   %peak is of the 1024x1024 matmul; engine/x = the faster engine's steps/s / this "
    "runner's steps/s\n" + table(header, rows, left=2)
  )
  notes = []
  for partition, res in out.items():
    cs = res["client_sizes"]
    notes.append(
      f"   {partition}: {res['flops_per_step'] / 1e6:.3f} MFLOP/step; client sizes "
      f"{cs['min']}..{cs['max']} (mean {cs['mean']:.1f}, {cs['empty']} empty); "
      f"init (compile + version-0 dispatch) {res['init_s']:.2f} s"
    )
    for name, eng in res["engines"].items():
      notes.append(
        f"     {name}: useful fraction (real / executed local steps, padding included) "
        f"{100 * eng['useful_fraction']:.0f}%, executed {eng['gflops_executed']:.2f} GFLOP/s; "
        f"chunk {eng['chunk_s_median'] * 1e3:.1f} ms / {eng['chunk']} rounds"
      )
  report.append("\n".join(notes))
  return out


# Local loops of baseline (a) for the CNN: the engine's default, and fully unrolled steps.
CNN_BASELINES = {
  "local while": Mode(local_loop="while"),
  "local scan, unrolled": Mode(local_loop="scan", local_unroll=True),
}


def cnn_section(args, report) -> dict:
  modes = [m for m in args.cnn_modes.split(",") if m]
  unknown = [m for m in modes if m not in CNN_MODES]
  if unknown:
    raise SystemExit(f"unknown --cnn_modes {unknown}; expected some of {list(CNN_MODES)}")
  total_rounds = (args.cnn_rounds // args.cnn_chunk + 2) * args.cnn_chunk
  w = make_workload("cnn", "dirichlet", max(total_rounds, args.baseline_rounds))
  flops = model_step_flops(w)
  out = {"flops_per_step": flops, "init_s": w.init_seconds, "modes": {}, "a": {}}
  for name in modes:
    res = measure_engine(w, args.cnn_rounds, args.cnn_chunk, CNN_MODES[name])
    res["gflops"] = res["steps_per_s"] * flops / 1e9
    out["modes"][name] = res
    print(f"  [cnn {name} done]", file=sys.stderr, flush=True)
  for label, mode in CNN_BASELINES.items():
    res = baseline_a(w, args.baseline_rounds, mode)
    res["gflops"] = res["steps_per_s"] * flops / 1e9
    out["a"][label] = res
  best_a_name = max(out["a"], key=lambda n: out["a"][n]["steps_per_s"])
  ref = out["a"][best_a_name]["steps_per_s"]

  def row(label, res, useful):
    head = [label, str(res["rounds"]), fmt(res["client_steps"]), fmt(res["steps_per_s"])]
    return head + [fmt(res["gflops"], 2), useful, fmt(res["compile_s"], 2),
                   f"{res['steps_per_s'] / ref:.2f}x"]  # fmt: skip

  rows = []
  for res in out["modes"].values():
    res["vs_a"] = res["steps_per_s"] / ref
    rows.append(row(f"engine {res['mode']}", res, fmt(100 * res["useful_fraction"])))
  for label, res in out["a"].items():
    rows.append(row(f"(a) per-client jit loop, {label}", res, ""))
  header = ["runner", "rounds", "steps", "steps/s", "GFLOP/s", "useful %", "compile s", "vs (a)"]
  text = (
    "== small CNN (channels 16, 32), Dirichlet 0.1: execution modes vs baseline (a) ==\n"
    f"   {flops / 1e6:.2f} MFLOP/step (3 x XLA forward count); {args.cnn_chunk} rounds per "
    f"engine call in every mode; (a) reference = the faster (a), '{best_a_name}'; useful % = "
    "real / executed local steps\n" + table(header, rows)
  )
  if out["modes"]:
    winner = max(out["modes"], key=lambda n: out["modes"][n]["steps_per_s"])
    best = out["modes"][winner]["vs_a"]
    out["winner"], out["best_vs_a"] = winner, best
    text += (
      f"\n   winner: {out['modes'][winner]['mode']} at {best:.2f}x (a) (target >= "
      f"{TARGETS['cnn_best_vs_a']:.0f}x: {verdict(best, TARGETS['cnn_best_vs_a'])})"
    )
  report.append(text)
  return out


# The LSTM comparison. Unrolled local steps would copy the LSTM's own time scans once per step
# (minutes of compile for no gain: the time loop stays a loop), so every mode keeps loops.
LSTM_MODES = {
  "vmap/scan": Mode("vmap", "scan"),
  "vmap/scan+lscan": Mode("vmap", "scan", "scan"),
  "map/scan": Mode("map", "scan"),
  "unroll/scan": Mode("unroll", "scan"),
}


def lstm_step_flops(config, num_classes: int) -> float:
  """Forward + backward of `CharLSTM` on one minibatch: ~3 x the forward's matmul FLOPs.

  Per example and time step, layer l does 2 x 4H x (in_l + H) FLOPs (in_1 = E, else H);
  the head 2 x (L H) x C once per example. Elementwise gate math is not counted.
  """
  m, t, b = config.model, config.data.seq_len, config.local.batch_size
  e, h, layers = m.embed_dim, m.lstm_hidden, m.lstm_layers
  recurrent = sum(2 * 4 * h * ((e if layer == 0 else h) + h) for layer in range(layers))
  return 3.0 * b * (t * recurrent + 2 * layers * h * num_classes)


def lstm_section(args, report) -> dict:
  """The LSTM of `fedqs_shakespeare.py:cpu` in each execution mode vs baselines (a) and (b)."""
  from experiments.configs import fedqs_shakespeare

  modes = [m for m in args.lstm_modes.split(",") if m]
  unknown = [m for m in modes if m not in LSTM_MODES]
  if unknown:
    raise SystemExit(f"unknown --lstm_modes {unknown}; expected some of {list(LSTM_MODES)}")
  c = fedqs_shakespeare.get_config("cpu")
  total_rounds = (args.lstm_rounds // args.lstm_chunk + 2) * args.lstm_chunk
  w = workload_from_config(c, max(total_rounds, args.baseline_rounds), args.lstm_seeds)
  flops = lstm_step_flops(w.config, w.data.num_classes)
  counts = np.asarray(w.data.client_count)
  out = {
    "flops_per_step": flops,
    "init_s": w.init_seconds,
    "seeds": args.lstm_seeds,
    "client_sizes": {"min": int(counts.min()), "max": int(counts.max())},
    "local_steps_max": int(w.task_steps(np.arange(len(counts))).max()),
    "modes": {},
  }
  for name in modes:
    res = measure_engine(w, args.lstm_rounds, args.lstm_chunk, LSTM_MODES[name])
    res["gflops"] = res["steps_per_s"] * flops / 1e9
    out["modes"][name] = res
    print(f"  [lstm {name} done]", file=sys.stderr, flush=True)
  a = baseline_a(w, args.baseline_rounds)
  bb = baseline_b(w, args.baseline_rounds)
  for res in (a, bb):
    res["gflops"] = res["steps_per_s"] * flops / 1e9
  out["a"], out["b"] = a, bb

  def row(label, res, useful):
    head = [label, str(res["rounds"]), fmt(res["client_steps"]), fmt(res["steps_per_s"])]
    return head + [fmt(res["gflops"], 2), useful, fmt(res["compile_s"], 2),
                   f"{res['steps_per_s'] / a['steps_per_s']:.2f}x",
                   f"{res['steps_per_s'] / bb['steps_per_s']:.2f}x"]  # fmt: skip

  rows = []
  for res in out["modes"].values():
    res["vs_a"] = res["steps_per_s"] / a["steps_per_s"]
    res["vs_b"] = res["steps_per_s"] / bb["steps_per_s"]
    rows.append(row(f"engine {res['mode']}", res, fmt(100 * res["useful_fraction"])))
  rows.append(row(f"(a) per-client jit loop, {a['mode']}", a, ""))
  rows.append(row("(b) per-step jit loop", bb, ""))
  m = w.config.model
  header = ["runner", "rounds", "steps", "steps/s", "GFLOP/s", "useful %", "compile s", "vs (a)",
            "vs (b)"]  # fmt: skip
  text = (
    f"== LSTM (fedqs_shakespeare.py:cpu): execution modes vs baselines (a), (b) ==\n"
    f"   Embed({w.data.num_classes}, {m.embed_dim}) -> {m.lstm_layers} x LSTM({m.lstm_hidden}) "
    f"-> Dense, windows of {w.config.data.seq_len}; N={w.data.num_clients} "
    f"({w.config.data.roles} roles), K={w.config.schedule.buffer_size}, batch "
    f"{w.config.local.batch_size}, {w.config.local.epochs} local epoch(s) (<= "
    f"{out['local_steps_max']} steps, clients of {counts.min()}..{counts.max()} windows), "
    f"FedAvg, {args.lstm_seeds} seed(s) vmapped\n"
    f"   {flops / 1e6:.2f} MFLOP/step (3 x the forward's matmuls); {args.lstm_chunk} rounds per "
    "engine call; useful % = real / executed local steps; (a), (b): seed 0 only\n"
    + table(header, rows)
  )
  if out["modes"]:
    winner = max(out["modes"], key=lambda n: out["modes"][n]["steps_per_s"])
    out["winner"], out["best_vs_a"] = winner, out["modes"][winner]["vs_a"]
    out["best_vs_b"] = out["modes"][winner]["vs_b"]
    text += (
      f"\n   winner: {out['modes'][winner]['mode']} at {out['best_vs_a']:.2f}x (a), "
      f"{out['best_vs_b']:.2f}x (b); init (compile + version-0 dispatch) {w.init_seconds:.1f} s"
    )
  report.append(text)
  return out


def schedule_report(results: list[dict], notes: list[str], report) -> None:
  rows = []
  target = TARGETS["schedule_arrivals_per_s"]
  for r in results:
    rows.append(
      [
        r["protocol"],
        fmt(r["clients"]),
        str(r["k"]),
        fmt(r["rounds"]),
        str(r["seeds"]),
        fmt(r["arrivals"]),
        fmt(r["seconds"] * 1e3, 1),
        fmt(r["arrivals_per_s"]),
        fmt(r["compile_s"], 2),
        verdict(r["arrivals_per_s"], target) + (" (overflow!)" if r["overflow"] else ""),
      ]
    )
  header = [
    "protocol",
    "N",
    "K",
    "T",
    "seeds",
    "arrivals",
    "ms",
    "arrivals/s",
    "compile s",
    f">={target / 1e6:.0f}M/s",
  ]
  text = "== schedule phase (jitted, seed-vmapped simulate, after warm-up) ==\n" + table(
    header, rows
  )
  for r in results:
    if "ticks_per_s" in r:
      text += f"\n   tick: {r['ticks_per_s']:,.0f} simulated ticks/s"
  text += "".join(f"\n   note: {n}" for n in notes)
  report.append(text)


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  skip = {s for s in args.skip.split(",") if s}
  start = now()
  load_start = loadavg()
  env = {
    "devices": [str(d) for d in jax.devices()],
    "jax": jax.__version__,
    "jaxlib": getattr(jax.lib, "__version__", None) or version("jaxlib"),
    "flax": version("flax"),
    "optax": optax.__version__,
    "python": platform.python_version(),
    "cpu_count": os.cpu_count(),
    "machine": platform.machine(),
  }
  results: dict[str, Any] = {"env": env, "args": vars(args), "targets": TARGETS}
  report: list[str] = [
    "== environment ==\n"
    f"   devices {env['devices']}; jax {env['jax']} (jaxlib {env['jaxlib']}), flax "
    f"{env['flax']}, optax {env['optax']}; python {env['python']}; {env['cpu_count']} CPUs "
    f"({env['machine']})\n"
    f"   1-min load average at start {load_start} (this benchmark wants an idle machine)\n"
    "   workload: digits, N=100, semi_async K=10, latencies 1..50, batch 32, 2 local epochs, "
    "lr 0.1, FedAvg, 1 seed"
  ]

  peaks = matmul_peaks(args.quick)
  results["peaks_gflops"] = peaks
  report.append(
    "== reference peaks (jitted float32 matmuls on this device) ==\n"
    + table(["kernel", "GFLOP/s"], [[k, fmt(v, 2)] for k, v in peaks.items()])
  )
  print("  [peaks done]", file=sys.stderr, flush=True)

  if "mlp" not in skip:
    results["mlp"] = mlp_section(args, peaks, report)
  if "cnn" not in skip:
    results["cnn"] = cnn_section(args, report)
  if "lstm" not in skip:
    results["lstm"] = lstm_section(args, report)
  if "schedule" not in skip:
    sched_results, notes = schedule_section(args)
    results["schedule"] = {"results": sched_results, "notes": notes}
    schedule_report(sched_results, notes, report)

  summary = []
  for partition, res in results.get("mlp", {}).items():
    summary.append(
      f"   MLP {partition}: engine/(a) {res['engine_vs_a']:.1f}x (>= {TARGETS['dense_vs_a']:.0f}x "
      f"{verdict(res['engine_vs_a'], TARGETS['dense_vs_a'])}), engine/(b) "
      f"{res['engine_vs_b']:.1f}x (>= {TARGETS['dense_vs_b']:.0f}x "
      f"{verdict(res['engine_vs_b'], TARGETS['dense_vs_b'])})"
    )
  if "best_vs_a" in results.get("cnn", {}):
    cnn = results["cnn"]
    summary.append(
      f"   CNN best mode {cnn['winner']}: {cnn['best_vs_a']:.2f}x (a) (>= 1x "
      f"{verdict(cnn['best_vs_a'], TARGETS['cnn_best_vs_a'])})"
    )
  if "best_vs_a" in results.get("lstm", {}):
    lstm = results["lstm"]
    summary.append(
      f"   LSTM best mode {lstm['winner']}: {lstm['best_vs_a']:.2f}x (a), "
      f"{lstm['best_vs_b']:.2f}x (b) (no target)"
    )
  for r in results.get("schedule", {}).get("results", []):
    summary.append(
      f"   schedule {r['protocol']} N={r['clients']}: {r['arrivals_per_s'] / 1e6:.2f}M "
      f"arrivals/s (>= 1M {verdict(r['arrivals_per_s'], TARGETS['schedule_arrivals_per_s'])})"
    )
  wall = now() - start
  results["wall_s"] = wall
  results["env"]["loadavg_start"], results["env"]["loadavg_end"] = load_start, loadavg()
  if (results["env"]["loadavg_end"] or 0) > (os.cpu_count() or 1) + 0.5:
    summary.append(
      f"   WARNING: 1-min load average {results['env']['loadavg_end']} at the end on "
      f"{os.cpu_count()} CPUs: other processes competed for the CPU, rates are low"
    )
  report.append("== targets ==\n" + "\n".join(summary) + f"\n   total wall time {wall:.1f} s")
  print("\n\n".join(report), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=2, default=_json_default)
    print(f"wrote {args.out}")
  return 0


def _json_default(x):
  if isinstance(x, np.generic):
    return x.item()
  return str(x)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

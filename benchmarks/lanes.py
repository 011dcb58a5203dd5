"""Work-balanced local training: lockstep (`vmap`) vs `lanes` on a CIFAR-shaped workload.

The paper's CV workload: N = 100 clients of CIFAR-10 split by Dirichlet(0.1) labels,
semi-asynchronous with K = 10, 2 local epochs, batch 50 (tasks of 0..126 steps, mean
21). The data is synthetic 32x32x3 noise with the real partition's client sizes
(CIFAR-10 has 5,000 training images per class, so the Dirichlet label split needs no
images); the model a small MLP (CPU: convolutions inside loops are slow). For one run
and for a grid of G seeds, each with its own schedule, it prints per mode:

  useful   real local steps / executed ones (executed: lockstep runs every task of a
           round, of every point, as long as the longest; lanes run L lanes as long
           as the longest lane, from the engine's own plan `engine.pack_lanes`)
  steps/s  real client-steps per second over the timed chunks (after compile)
  compile  the first chunk's time minus a timed one

Targets: lanes' useful fraction >= 85% for one run and for G = 64, and lanes' real
steps/s >= 2x vmap's in the same run.

  python benchmarks/lanes.py                   # G = 1 and 64, about 5 minutes on 2 cores
  python benchmarks/lanes.py --grids=1,8 --json=lanes.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np
from common import compilation_cache, lane_slots, loadavg, table

from experiments.configs import default as default_config
from fedqs_jax import config as config_lib
from fedqs_jax import program
from fedqs_jax.data import partition

TARGET_USEFUL, TARGET_SPEEDUP = 0.85, 2.0


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--grids", default="1,64", help="grid sizes G (seeds, own schedules)")
  p.add_argument("--clients", type=int, default=100)
  p.add_argument("--buffer", type=int, default=10, help="K")
  p.add_argument("--hidden", type=int, default=16, help="MLP hidden width")
  p.add_argument("--alpha", type=float, default=0.1, help="Dirichlet concentration")
  p.add_argument("--rounds", default="20,2", help="timed rounds per grid size (one chunk)")
  p.add_argument("--repeats", type=int, default=1, help="timed chunks per measurement")
  p.add_argument("--json", default=None, help="also write the results here")
  return p.parse_args(argv)


def cifar_shaped(num_clients: int, alpha: float, seed: int = 0):
  """Synthetic 32x32x3 data with CIFAR-10's Dirichlet(alpha) client sizes."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(10), 5000)
  parts = partition.hetero_dirichlet(labels, num_clients, alpha, rng)
  x = rng.standard_normal((labels.size, 32, 32, 3), dtype=np.float32)
  return partition.pack(x, labels, parts, x[:500], labels[:500], 10)


def make_config(args, grid: int, rounds: int):
  c = default_config.get_config()
  c.algorithms = "fedavg"
  c.num_seeds = grid
  c.data.num_clients = args.clients
  c.model.name = "mlp"
  c.model.hidden = (args.hidden,)
  c.schedule.protocol = "semi_async"
  c.schedule.buffer_size = args.buffer
  c.schedule.num_rounds = 3 * rounds
  c.local.epochs, c.local.batch_size = 2, 50
  c.engine.eval_every = rounds
  config_lib.validate(c)
  return c


def executed_steps(eng, mode: str, lengths: np.ndarray) -> int:
  """Local-step slots the engine runs for tasks of `lengths` [G, rounds, K]."""
  if mode == "vmap":  # every task of a round, in every point, as long as the longest
    grid, _, k = lengths.shape
    return int(grid * k * lengths.max(axis=(0, 2)).sum())
  return lane_slots(eng, lengths)


def measure(args, data, grid: int, rounds: int, mode: str) -> dict:
  c = make_config(args, grid, rounds)
  c.engine.client_mode = mode
  sched = program.make_schedule(c)
  prog = program.build_program(c, "fedavg", data, sched.num_slots)
  eng = prog.engine
  seeds = config_lib.seeds(c)
  hparams = prog.grid_hparams([{}] * grid)
  params = jax.vmap(lambda k: prog.model.init(k, data.x_train[:1]))(
    program.seed_keys(seeds, program.INIT_STREAM)
  )
  # The state before the version-0 tasks: their training (all N clients) is not timed.
  keys = program.seed_keys(seeds, program.TRAIN_STREAM)
  state = jax.jit(jax.vmap(eng._initial_state))(keys, params, hparams)
  events = sched.events()

  def chunk(state):
    state, metrics, evaluation = eng.run_chunk(state, events, hparams, data)
    jax.device_get(evaluation)
    return state, int(np.sum(metrics["client_steps"]))

  t0 = time.perf_counter()
  state, _ = chunk(state)
  first = time.perf_counter() - t0
  seconds, steps = [], 0
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    state, real = chunk(state)
    seconds.append(time.perf_counter() - t0)
    steps += real
  start, stop = rounds, rounds * (1 + args.repeats)
  clients = np.asarray(sched.dispatch_client)[:, start:stop]
  mask = np.asarray(sched.dispatch_mask)[:, start:stop]
  lengths = np.where(mask, np.asarray(eng.num_steps(np.asarray(data.client_count)))[clients], 0)
  assert int(lengths.sum()) == steps, "the engine's step count disagrees with the schedule's"
  executed = executed_steps(eng, mode, lengths)
  return {
    "grid": grid,
    "mode": mode,
    "lanes": eng.num_lanes(grid * args.buffer) if mode == "lanes" else None,
    "rounds": stop - start,
    "real_steps": steps,
    "executed_steps": executed,
    "useful": steps / executed,
    "seconds": sum(seconds),
    "steps_per_s": steps / sum(seconds),
    "compile_s": first - min(seconds),
  }


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  compilation_cache()
  grids = [int(g) for g in args.grids.split(",")]
  rounds = [int(r) for r in args.rounds.split(",")]
  rounds += [rounds[-1]] * (len(grids) - len(rounds))
  data = cifar_shaped(args.clients, args.alpha)
  steps = np.asarray(2 * -(-np.asarray(data.client_count) // 50))
  print(
    f"CIFAR-shaped: N={args.clients}, Dirichlet {args.alpha}, K={args.buffer}, 2 epochs, "
    f"batch 50: task steps 0..{steps.max()}, mean {steps.mean():.1f}; "
    f"MLP 3072-{args.hidden}-10; {jax.devices()[0].platform}, load {loadavg()}"
  )
  results, rows = [], []
  for grid, r in zip(grids, rounds, strict=True):
    pair = {mode: measure(args, data, grid, r, mode) for mode in ("vmap", "lanes")}
    speedup = pair["lanes"]["steps_per_s"] / pair["vmap"]["steps_per_s"]
    for mode, res in pair.items():
      res["speedup_vs_vmap"] = speedup if mode == "lanes" else 1.0
      results.append(res)
      ok = res["useful"] >= TARGET_USEFUL and speedup >= TARGET_SPEEDUP
      rows.append(
        [
          grid,
          mode + (f" (L={res['lanes']})" if res["lanes"] else ""),
          res["rounds"],
          f"{res['useful']:.1%}",
          f"{res['steps_per_s']:,.0f}",
          f"{res['speedup_vs_vmap']:.2f}x",
          f"{res['compile_s']:.1f}",
          ("ok" if ok else "MISSED") if mode == "lanes" else "",
        ]
      )
  header = ["G", "mode", "rounds", "useful", "real steps/s", "vs vmap", "compile s", "target"]
  print(table(header, rows, left=2))
  print(f"targets: lanes useful >= {TARGET_USEFUL:.0%}, real steps/s >= {TARGET_SPEEDUP}x vmap")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"load": loadavg(), "results": results}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

"""FedQS's overhead over FedSGD: client-steps per second of the same engine, same schedule.

The paper claims negligible overhead (one similarity and two comparisons per client).
Here FedQS also evaluates the received model on the client's validation data (the SBC
check) and keeps one param-sized previous update per client.

  python benchmarks/fedqs_overhead.py [--rounds=200] [--repeats=5]

Workload: digits, N = 100, Dirichlet 0.1, K = 10, 1:50, MLP, 20% validation held out
(every method), batch 50, 2 local epochs. The algorithms are timed in alternation, chunk by
chunk, so that machine noise hits both alike; the median of the repeats is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import numpy as np
from common import compilation_cache

from experiments.configs import fedqs_digits
from fedqs_jax import data as data_lib
from fedqs_jax import program

ALGORITHMS = ("fedsgd", "fedqs_sgd", "fedavg", "fedqs_avg")


def build(config, name, data, sched):
  prog = program.build_program(config, name, data, sched.num_slots)
  engine = prog.engine
  hparams = prog.grid_hparams([{}])
  params = jax.vmap(lambda k: prog.model.init(k, data.x_train[:1]))(
    program.seed_keys([0], program.INIT_STREAM)
  )
  start = time.perf_counter()
  state = engine.init(
    program.seed_keys([0], program.TRAIN_STREAM), params, sched.init_client, sched.init_slot,
    sched.init_mask, hparams, data,
  )  # fmt: skip
  state, _, ev = engine.run_chunk(state, sched.events(), hparams, data)
  jax.block_until_ready(ev)
  return engine, state, hparams, time.perf_counter() - start


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=200)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  compilation_cache()  # a fresh temporary cache: the compiles it times stay cold
  config = fedqs_digits.get_config()
  config.num_seeds = 1
  config.engine.eval_every = 10
  config.schedule.num_rounds = 10 * (1 + args.rounds // 10 * args.repeats)
  data = data_lib.load(config.data, config.data.seed)
  sched = program.make_schedule(config)
  runners = {name: build(config, name, data, sched) for name in ALGORITHMS}
  states = {name: r[1] for name, r in runners.items()}
  rates = {name: [] for name in ALGORITHMS}
  for _ in range(args.repeats):
    for name in ALGORITHMS:
      engine, _, hparams, _ = runners[name]
      steps, start = 0, time.perf_counter()
      for _ in range(args.rounds // 10):
        states[name], per_round, ev = engine.run_chunk(states[name], sched.events(), hparams, data)
        jax.device_get(ev)
        steps += int(np.asarray(per_round["client_steps"]).sum())
      rates[name].append(steps / (time.perf_counter() - start))
  print(f"devices {jax.devices()}, jax {jax.__version__}; {args.rounds} rounds x {args.repeats}")
  print(f"{'algorithm':<10} {'client-steps/s':>15} {'compile+init s':>15} {'vs baseline':>12}")
  for name in ALGORITHMS:
    rate = statistics.median(rates[name])
    base = statistics.median(rates[name.replace("fedqs_", "fed")])
    print(f"{name:<10} {rate:>15,.0f} {runners[name][3]:>15.2f} {rate / base:>11.2f}x")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

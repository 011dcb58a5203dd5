"""Per-round cost of failure isolation with an [N, P] server cache: the global model only
(`Engine._isolate_failure`, since d16244c) vs the whole server state as well (before).

  python benchmarks/isolation.py                        # N = 200, 2,000 (~2-3 minutes)
  python benchmarks/isolation.py --clients=200,2000,10000 --reps=7
  python benchmarks/isolation.py --algorithm=ca2fl      # a registered algorithm instead

Failure isolation freezes a grid point whose model became non-finite. The old policy
also selected the server state between the round's start and end, every round: with a
server cache of every client's latest update (CA2FL-style) that is an O(N P) select, and
the round's K-row cache write can no longer happen in place (the start state stays live),
so XLA copies the cache too. The new one selects the global model only, O(P).

Workload: the default config's digits MLP (hidden 64), Dirichlet 0.1, semi_async K = 10,
latencies 1..50, batch 32, 1 local epoch, one seed; the program (`fedqs_jax.program`) of
FedAvg supplies the model functions, hyperparameters and engine settings. The algorithm
(`--algorithm=cache`, the default) is defined here: clients upload their update
Delta_i = w_i - w^(v_i), the server writes the K arrivals' updates into their rows of an
[N, P] cache (`.at[clients].set`) and moves the global model by their mean. Any registered
algorithm can be measured instead (`--algorithm=<name>`, built by `build_program`).

Both policies run the same program except `_isolate_failure` (the old one: an `Engine`
subclass). Per N, each engine compiles (the first chunk: compile time = first chunk -
steady chunk) and runs a warm-up chunk; then in `--reps` interleaved repetitions each
replays `--block` measured chunks of `--chunk` rounds (the same rounds every repetition:
`state.round` is reset), fetching each chunk's evaluation like `run.train`. ms/round is the
median over repetitions. Both policies must end with the same global model (bitwise).
Digits has 1,437 training examples: at N = 2,000 most clients hold 0-2 of them, so the
local work per round (steps/round) is smaller than at N = 200.

Observed (default flags, the shared 2-core CPU at load average 4-6, jax 0.10.2): old/new
2.1x at N = 200 (2.40 vs 1.15 ms/round), 8.1x at N = 2,000 (16.0 vs 2.0 ms/round); the new
policy's N = 2,000 round still costs 1.7x the N = 200 one with a third of the local steps
(1.5x with 50-round chunks: part of it is paid per chunk).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import compilation_cache, loadavg, table, timed, version

from experiments.configs import default as default_config
from fedqs_jax import config as config_lib
from fedqs_jax import data as data_lib
from fedqs_jax import memory, program
from fedqs_jax.algorithms import base
from fedqs_jax.engine import Engine


class SelectServerState(Engine):
  """The failure isolation before d16244c: the server state is selected as well."""

  def _isolate_failure(self, before, after, finite):
    state = super()._isolate_failure(before, after, finite)
    ok = finite & ~before.diverged
    return state.replace(server_state=base.tree_where(ok, after.server_state, before.server_state))


def latest_update_cache() -> base.Algorithm:
  """A CA2FL-style server cache: the latest update of every client, [N, P].

  The server writes the K arrivals' updates Delta_i into their clients' rows and sets
  w <- w + (1 / K) sum_i Delta_i.
  """

  def init(params, num_clients, hparams):
    del hparams
    cache = jax.tree.map(lambda x: jnp.zeros((num_clients, *x.shape), x.dtype), params)
    return cache, ()

  def aggregate(cache, params, arrivals: base.Arrivals, hparams):
    del hparams
    cache = jax.tree.map(lambda c, u: c.at[arrivals.client].set(u), cache, arrivals.payload)
    k = arrivals.client.shape[0]
    direction = base.weighted_sum(jnp.full((k,), 1.0 / k), arrivals.payload)
    return jax.tree.map(jnp.add, params, direction), cache, {}

  return base.Algorithm("cache", init, base.default_begin, base.upload_update, aggregate)


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--clients", default="200,2000", help="comma-separated N")
  p.add_argument("--algorithm", default="cache", help="'cache' (defined here) or a registered one")
  p.add_argument("--chunk", type=int, default=10, help="rounds per engine call")
  p.add_argument("--chunks", type=int, default=3, help="distinct chunks the repetitions cycle over")
  p.add_argument("--block", type=int, default=2, help="chunks per timed block")
  p.add_argument("--reps", type=int, default=5, help="interleaved timing repetitions")
  return p.parse_args(argv)


class Runner:
  """One engine on one N: its state after the compile and warm-up chunks, and its timings."""

  def __init__(self, engine: Engine, init_args: tuple, events, hparams, data, chunk: int):
    self.engine, self.events, self.hparams, self.data = engine, events, hparams, data
    self.state = jax.block_until_ready(engine.init(*init_args, hparams, data))
    first = timed(self.run_chunk)[1]
    warm = timed(self.run_chunk)[1]
    self.compile_s = max(first - warm, 0.0)
    self.start, self.chunk, self.round_s = chunk, chunk, []

  def run_chunk(self):
    self.state, per_round, evaluation = self.engine.run_chunk(
      self.state, self.events, self.hparams, self.data
    )
    jax.device_get(evaluation)  # what `run.train` does after every chunk
    return self.state, per_round

  def measure(self, rep: int, chunks: int, block: int) -> float:
    """Seconds per round of `block` replays of measured chunk `rep % chunks`; its steps/round."""
    start = self.start + self.chunk * (rep % chunks)
    steps, t0 = 0, time.perf_counter()
    for _ in range(block):
      r = self.state.round
      self.state = self.state.replace(round=jax.device_put(np.full(r.shape, start, r.dtype)))
      _, per_round = self.run_chunk()
      steps += int(np.sum(per_round["client_steps"]))
    self.round_s.append((time.perf_counter() - t0) / (block * self.chunk))
    return steps / (block * self.chunk)


def measure(args, num_clients: int) -> dict:
  """Old and new isolation on N = `num_clients`, timed in interleaved repetitions."""
  c = default_config.get_config()
  c.algorithms = args.algorithm if args.algorithm != "cache" else "fedavg"
  c.data.num_clients = num_clients
  c.local.epochs = 1
  c.engine.eval_every = args.chunk
  c.schedule.num_rounds = args.chunk * (1 + args.chunks)
  config_lib.validate(c)
  data = data_lib.load(c.data, c.data.seed)
  sched = program.make_schedule(c)
  prog = program.build_program(c, c.algorithms, data, sched.num_slots)
  algorithm = latest_update_cache() if args.algorithm == "cache" else prog.algorithm
  hparams = prog.grid_hparams([{}])
  params = jax.vmap(lambda k: prog.model.init(k, data.x_train[:1]))(
    program.seed_keys([c.seed], program.INIT_STREAM)
  )
  init_args = (
    program.seed_keys([c.seed], program.TRAIN_STREAM), params, sched.init_client,
    sched.init_slot, sched.init_mask,
  )  # fmt: skip

  def engine(cls):  # the program's engine settings, with `algorithm` and `cls`'s isolation
    e = prog.engine
    return cls(algorithm, e.apply_fn, data, e.num_slots, e.local, e.execution, e.train_fn)

  runners = {
    policy: Runner(engine(cls), init_args, sched.events(), hparams, data, args.chunk)
    for policy, cls in (("old", SelectServerState), ("new", Engine))
  }
  steps = []
  for rep in range(args.reps):
    for runner in runners.values():
      steps.append(runner.measure(rep, args.chunks, args.block))
  old, new = runners["old"], runners["new"]
  same = jax.tree.all(
    jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), old.state.params, new.state.params)
  )
  print(f"  [N={num_clients} done]", file=sys.stderr, flush=True)
  return {
    "n": num_clients,
    "empty": int(np.sum(np.asarray(data.client_count) == 0)),
    "params": sum(x[0].size for x in jax.tree.leaves(params)),
    "server_bytes": memory.tree_bytes(old.state.server_state),
    "steps": statistics.median(steps),
    "compile_old": old.compile_s,
    "compile_new": new.compile_s,
    "old": statistics.median(old.round_s),
    "new": statistics.median(new.round_s),
    "same": same,
  }


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  compilation_cache()  # a fresh temporary cache: the compiles it times stay cold
  start, load = time.perf_counter(), loadavg()
  results = [measure(args, int(n)) for n in args.clients.split(",")]
  base_new = results[0]["new"]
  rows = [
    [
      f"{r['n']:,}", f"{r['empty']:,}", f"{r['server_bytes'] / 2**20:.1f}", f"{r['steps']:.1f}",
      f"{r['compile_old']:.1f} / {r['compile_new']:.1f}", f"{1e3 * r['old']:.2f}",
      f"{1e3 * r['new']:.2f}", f"{r['old'] / r['new']:.2f}", f"{r['new'] / base_new:.2f}",
      "yes" if r["same"] else "NO",
    ]
    for r in results
  ]  # fmt: skip
  n0 = results[0]["n"]
  header = ["N", "empty", "server MiB", "steps/round", "compile s old / new", "old ms/round",
            "new ms/round", "old/new", f"new/new(N={n0})", "same model"]  # fmt: skip
  print(
    f"== failure isolation, server state [N, P] (algorithm '{args.algorithm}', P = "
    f"{results[0]['params']:,}): old = params + server state selected per round, new = "
    "params only ==\n"
    f"   digits MLP(64), semi_async K=10, 1 local epoch; {args.chunk}-round chunks, median of "
    f"{args.reps} interleaved repetitions of {args.block} chunks\n"
    f"   devices {jax.devices()}; jax {jax.__version__} (jaxlib {version('jaxlib')}); 1-min "
    f"load average {load} -> {loadavg()}; wall {time.perf_counter() - start:.0f} s\n"
    + table(header, rows)
  )
  return 0 if all(r["same"] for r in results) else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

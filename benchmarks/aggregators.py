"""Per-round cost of each registered algorithm's `aggregate` alone, relative to FedSGD's.

  python benchmarks/aggregators.py                    # N = 200, 2,000 (~2-4 minutes)
  python benchmarks/aggregators.py --clients=200,2000,10000 --reps=9
  python benchmarks/aggregators.py --algorithms=fedsgd,ca2fl

Workload: an MLP-sized model (Dense 784 -> 64 -> 10: 50,890 parameters), K = 10 arrivals
per round from K distinct random clients of N, staleness uniform in 0..20, data sizes in
1..50, payloads random with each algorithm's own payload structure (`payload_shape` of
its `client_end`), server state from its `init` (default config, N clients). A jitted
`lax.scan` over `--rounds` rounds of `aggregate` (the server state and the model carried
and donated, as in the engine's round scan, so that K-row writes into an [N, P] server
cache happen in place) is timed after its compile; ms/round is the median of `--reps`
interleaved repetitions. `/fedsgd` is the ratio to FedSGD's ms/round at the same N, and
`N1/N0` the algorithm's own ms/round at the last N over the first: an aggregation without
O(N P) work per round stays near 1 (CA2FL must).

Observed (default flags, the shared 2-core CPU at load average 4-5, jax 0.10.2): FedSGD
0.19-0.20 ms/round; FedAvg, FedBuff, FedAsync, FedProx, FADAS, FedQS, GenAsyncSGD within
0.7-1.7x of it; FedAC and WKAFL 4-6x (cosines, Adam); CA2FL 3.8 ms at N = 200 and 4.9-6.9
ms at N = 2,000 (20-34x: the K-row gather and write of its [N, P] cache and a few
passes over the [K, P] updates), its N = 2,000 / N = 200 ratio 0.67-1.83 over four runs,
noise around 1 (no O(N P) work; before the in-place write it was 140 ms at N = 2,000);
SAFA 13 -> 131 ms (10x: it sums all N cached models every round).
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
from fedqs_jax import algorithms, memory
from fedqs_jax.algorithms import base

K = 10
MAX_STALENESS = 20


def mlp_params(key) -> dict:
  """The parameters of Dense(784 -> 64) -> Dense(64 -> 10)."""
  k1, k2 = jax.random.split(key)
  return {
    "Dense_0": {"kernel": 0.05 * jax.random.normal(k1, (784, 64)), "bias": jnp.zeros(64)},
    "Dense_1": {"kernel": 0.1 * jax.random.normal(k2, (64, 10)), "bias": jnp.zeros(10)},
  }


def random_like(key, struct, lead: tuple[int, ...]):
  """A random array of `struct`'s shape and dtype with leading axes `lead`."""
  shape = (*lead, *struct.shape)
  if struct.dtype == jnp.bool_:
    return jax.random.bernoulli(key, 0.3, shape)
  if jnp.issubdtype(struct.dtype, jnp.integer):
    return jnp.zeros(shape, struct.dtype)
  return (0.01 * jax.random.normal(key, shape)).astype(struct.dtype)


def arrivals(key, payload_struct, num_clients: int, rounds: int) -> base.Arrivals:
  """[rounds, K] arrivals: K distinct clients per round, random staleness and sizes."""
  kc, ks, kn, kp = jax.random.split(key, 4)
  clients = jax.vmap(lambda k: jax.random.choice(k, num_clients, (K,), replace=False))(
    jax.random.split(kc, rounds)
  ).astype(jnp.int32)
  staleness = jax.random.randint(ks, (rounds, K), 0, MAX_STALENESS + 1, jnp.int32)
  leaves, tree = jax.tree.flatten(payload_struct)
  keys = jax.random.split(kp, len(leaves))
  stacked = [random_like(k, s, (rounds, K)) for k, s in zip(keys, leaves, strict=True)]
  payload = tree.unflatten(stacked)
  return base.Arrivals(
    payload=payload,
    client=clients,
    staleness=staleness,
    num_examples=jax.random.randint(kn, (rounds, K), 1, 51).astype(jnp.float32),
    version=jnp.maximum(jnp.arange(rounds)[:, None] + MAX_STALENESS - staleness, 0),
    mask=jnp.ones((rounds, K), bool),
  )


class Runner:
  """One algorithm on one N: the scan of `rounds` aggregations, compiled and warmed up."""

  def __init__(self, name: str, num_clients: int, rounds: int, seed: int = 0):
    config = default_config.get_config()
    config.data.num_clients = num_clients
    rng = np.random.default_rng(seed)
    context = algorithms.BuildContext(
      num_clients=num_clients,
      routing=np.full(num_clients, 1.0 / num_clients),
      latency=rng.integers(1, 51, num_clients).astype(np.float64),
    )
    algo, own = algorithms.build(name, config, context)
    local = {k: float(config.local[k]) for k in base.LOCAL_HPARAMS}
    self.hparams = {k: jnp.float32(v) for k, v in {**local, **own}.items()}
    key = jax.random.PRNGKey(seed)
    self.params = mlp_params(key)
    server, clients = algo.init(self.params, num_clients, self.hparams)
    shape = base.payload_shape(algo, self.params, clients, self.hparams)
    del clients
    # Donated below: every leaf its own buffer (an init may share one between leaves).
    self.server = jax.tree.map(jnp.copy, server)
    self.xs = arrivals(jax.random.fold_in(key, 1), shape, num_clients, rounds)
    self.rounds = rounds
    self.server_bytes = memory.tree_bytes(self.server)
    self.num_params = sum(x.size for x in jax.tree.leaves(self.params))

    def scan(server, params, xs, hparams):
      def one(carry, arr):
        server, params = carry
        params, server, _ = algo.aggregate(server, params, arr, hparams)
        return (server, params), None

      return jax.lax.scan(one, (server, params), xs)[0]

    self.fn = jax.jit(scan, donate_argnums=(0, 1))
    first = timed(self.step)[1]
    warm = timed(self.step)[1]
    self.compile_s = max(first - warm, 0.0)
    self.round_s: list[float] = []

  def step(self):
    self.server, self.params = self.fn(self.server, self.params, self.xs, self.hparams)
    return self.params

  def measure(self) -> None:
    self.round_s.append(timed(self.step)[1] / self.rounds)

  @property
  def ms(self) -> float:
    return 1e3 * statistics.median(self.round_s)


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--clients", default="200,2000", help="comma-separated N")
  p.add_argument("--algorithms", default="", help="comma-separated names (default: all)")
  p.add_argument("--rounds", type=int, default=20, help="aggregations per timed call")
  p.add_argument("--reps", type=int, default=7, help="interleaved timing repetitions")
  return p.parse_args(argv)


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  compilation_cache()  # a fresh temporary cache: the compiles it times stay cold
  names = [n for n in args.algorithms.split(",") if n] or list(algorithms.names())
  if "fedsgd" not in names:
    names.insert(0, "fedsgd")
  sizes = [int(n) for n in args.clients.split(",")]
  start, load = time.perf_counter(), loadavg()
  ms: dict[tuple[str, int], float] = {}
  info: dict[tuple[str, int], tuple[float, float]] = {}
  errors: dict[str, str] = {}
  num_params = 0
  for n in sizes:
    runners = {}
    for name in names:
      if name in errors:
        continue
      try:
        runners[name] = Runner(name, n, args.rounds)
      except Exception as e:  # noqa: BLE001  (another engineer's algorithm may be mid-edit)
        errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
    for _ in range(args.reps):
      for runner in runners.values():
        runner.measure()
    for name, runner in runners.items():
      ms[name, n] = runner.ms
      info[name, n] = (runner.compile_s, runner.server_bytes / 2**20)
      num_params = runner.num_params
    del runners
    print(f"  [N={n} done]", file=sys.stderr, flush=True)
  first, last = sizes[0], sizes[-1]
  header = ["algorithm"]
  for n in sizes:
    header += [f"ms N={n:,}", "/fedsgd"]
  header += [f"N={last:,}/N={first:,}", f"compile s N={last:,}", f"server MiB N={last:,}"]
  rows = []
  for name in names:
    if name in errors:
      rows.append([name, *["-"] * (len(header) - 2), errors[name]])
      continue
    row = [name]
    for n in sizes:
      row += [f"{ms[name, n]:.3f}", f"{ms[name, n] / ms['fedsgd', n]:.1f}"]
    row += [
      f"{ms[name, last] / ms[name, first]:.2f}",
      f"{info[name, last][0]:.1f}",
      f"{info[name, last][1]:.1f}",
    ]
    rows.append(row)
  print(
    f"aggregate alone: K = {K}, P = {num_params:,} (MLP 784-64-10), {args.rounds} rounds per "
    f"call, median of {args.reps}; jax {version('jax')}, backend {jax.default_backend()}, "
    f"load {load} -> {loadavg()}, {time.perf_counter() - start:.0f} s"
  )
  print(table(header, rows))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

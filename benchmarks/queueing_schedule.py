"""Throughput of the `queueing` schedule protocol against `semi_async`, in the same run.

  python benchmarks/queueing_schedule.py                   # ~2 minutes on 2 busy CPU cores
  python benchmarks/queueing_schedule.py --quick           # smoke test (seconds)
  python benchmarks/queueing_schedule.py --out=bench.json  # also write the results as JSON

Workload: N = 100 and N = 10,000 clients, latencies drawn from 1..50 (the default config's
speed ratio), exponential service times; `queueing` with C = N tasks and uniform routing
(plain AsyncSGD as a closed network) against `semi_async` (N always-busy clients), both with
the same K (arrivals per aggregation), T rounds and S seeds vmapped in one jitted call.

Measured: arrivals per second (S * T * K / seconds, median of 3 timed calls after a
compiling call, `block_until_ready`), compile time (first call - median), and the ratio
queueing / semi_async. The queueing protocol processes one completion at a time (an argmin
over the N head-of-queue finish times, then O(1) linked-list updates); semi_async takes the
K earliest finishers with one `top_k` over N per round.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
from common import compilation_cache, measure_schedule

from experiments.configs import default as default_config
from fedqs_jax import config as config_lib
from fedqs_jax import io


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--clients", default="100,10000", help="comma-separated N values")
  p.add_argument("--buffer_sizes", default="1,10", help="comma-separated K values")
  p.add_argument("--rounds", type=int, default=0, help="T (0: 10,000 / K)")
  p.add_argument("--seeds", type=int, default=8, help="seeds vmapped in one call")
  p.add_argument("--quick", action="store_true", help="small sizes for a smoke test")
  p.add_argument("--out", default="", help="write the results to this JSON file")
  args = p.parse_args(argv)
  if args.quick:
    args.clients, args.buffer_sizes, args.seeds = "100,1000", "1", 4
    args.rounds = args.rounds or 500
  return args


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  compilation_cache()  # a fresh temporary cache: the compiles it times stay cold
  start = time.perf_counter()
  env = {
    "devices": [str(d) for d in jax.devices()],
    "jax": jax.__version__,
    "python": platform.python_version(),
    "cpu_count": os.cpu_count(),
    "machine": platform.machine(),
  }
  results = []
  for n in [int(x) for x in args.clients.split(",") if x]:
    config = default_config.get_config()
    config.data.num_clients = n
    config.time.distribution = "exponential"
    tm = config_lib.time_model(config)
    for k in [int(x) for x in args.buffer_sizes.split(",") if x]:
      rounds = args.rounds or max(10_000 // k, 1)
      uniform = jnp.full((n,), 1.0 / n, jnp.float32)
      pair = {
        "queueing": measure_schedule(
          tm, "queueing", rounds, k, args.seeds, concurrency=n, routing=uniform
        ),
        "semi_async": measure_schedule(tm, "semi_async", rounds, k, args.seeds),
      }
      pair["queueing"]["ratio_vs_semi_async"] = (
        pair["queueing"]["arrivals_per_s"] / pair["semi_async"]["arrivals_per_s"]
      )
      results.extend(pair.values())
      print(f"  measured N={n} K={k}", file=sys.stderr, flush=True)

  header = ("protocol", "N", "K", "T", "seeds", "arrivals/s", "ms/call", "compile s", "ratio",
            "updates/time", "mean staleness")  # fmt: skip
  rows = [
    (
      r["protocol"],
      f"{r['clients']:,}",
      str(r["k"]),
      f"{r['rounds']:,}",
      str(r["seeds"]),
      f"{r['arrivals_per_s']:,.0f}",
      f"{r['seconds'] * 1e3:.1f}",
      f"{r['compile_s']:.2f}",
      f"{r['ratio_vs_semi_async']:.2f}x" if "ratio_vs_semi_async" in r else "1 (base)",
      f"{r['simulated_updates_per_time']:.2f}",
      f"{r['staleness_mean']:.1f}",
    )
    for r in results
  ]
  widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
  line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
  print("== queueing vs semi_async schedule (jitted, seed-vmapped simulate, after warm-up) ==")
  print(f"   {env['devices']}, jax {env['jax']}, {env['cpu_count']} CPUs")
  print(line(header))
  for row in rows:
    print(line(row))
  print(
    "   queueing: C = N tasks, uniform routing (idle clients while others queue: fewer updates"
    " per unit of simulated time than semi_async, whose N clients are always busy)"
  )
  print(f"   total wall time {time.perf_counter() - start:.1f} s")
  if args.out:
    io.write_json(args.out, {"env": env, "results": results})
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

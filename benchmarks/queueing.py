"""Closed forms of the closed queueing network and their gradients: time per evaluation.

  python benchmarks/queueing.py                  # n = 100, C = 100 and n = 10,000, C = 1,000
  python benchmarks/queueing.py --quick          # smoke test (n up to 1,000, C up to 100)
  python benchmarks/queueing.py --out=bench.json # also write the results as JSON

Workload (`fedqs_jax.queueing`, spec/QUEUEING.md): n clients with service rates log-uniform in
[1e-3, 1e3] and Dirichlet(1) routing, seed 0; default float32. Measured per size, after a
compile call and a warm-up call, as the median of repeated calls blocked with
`block_until_ready` (compile time = first call - median call):

  1. closed forms: `queueing.closed_forms`, jitted: throughput, utilisation, E[X_i], sojourn,
     E[D_i] and naive E[D_i] of every client (exact mean value analysis, one `lax.scan` over
     c = 1..C);
  2. gradient: value and gradient of the wall-clock bound G(p, C) w.r.t. p (reverse mode
     through the scan);
  3. Buzen (JAX): log Z_0..Z_C by Buzen's recursion (`method="buzen"`);
  4. baseline: the same recursions in NumPy float64, vectorised over clients with a Python loop
     over c (Buzen, rows rescaled; and MVA, the accuracy reference), in this run;
  5. optimize_routing (small size only): Adam steps per second of the wall-clock objective.

Ratios are NumPy Buzen seconds / JAX seconds. Accuracy is the largest relative error of the
float32 results against NumPy float64 MVA (which agrees with NumPy float64 Buzen to ~1e-13).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import compilation_cache, loadavg, table

from fedqs_jax import queueing


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--sizes", default="100x100,10000x1000", help="comma-separated n x C")
  p.add_argument("--repeats", type=int, default=7, help="timed calls per measurement")
  p.add_argument("--optimize_steps", type=int, default=500, help="Adam steps (small size)")
  p.add_argument("--quick", action="store_true", help="small sizes (< 20 s)")
  p.add_argument("--out", default="", help="write the results to this JSON file")
  args = p.parse_args(argv)
  if args.quick:
    args.sizes, args.repeats, args.optimize_steps = "100x100,1000x100", 3, 100
  return args


def now() -> float:
  return time.perf_counter()


def measure(fn: Callable, *args, repeats: int) -> dict[str, float]:
  """First-call seconds, median steady seconds and compile estimate of `fn(*args)`."""
  t0 = now()
  out = jax.block_until_ready(fn(*args))
  first = now() - t0
  jax.block_until_ready(fn(*args))  # warm-up
  times = []
  for _ in range(repeats):
    t0 = now()
    jax.block_until_ready(fn(*args))
    times.append(now() - t0)
  sec = statistics.median(times)
  return {"first_s": first, "seconds": sec, "compile_s": max(first - sec, 0.0), "out": out}


def measure_host(fn: Callable, *args, repeats: int) -> dict[str, Any]:
  out = fn(*args)
  times = []
  for _ in range(repeats):
    t0 = now()
    fn(*args)
    times.append(now() - t0)
  return {"seconds": statistics.median(times), "out": out}


# ---------------------------------------------------------------------------
# NumPy float64 baselines.


def numpy_buzen(p: np.ndarray, mu: np.ndarray, c: int) -> np.ndarray:
  """[C] log(Z_c / Z_(c-1)): Buzen's recursion, rows of g^(i)_c over clients i, rescaled."""
  rho = p / mu
  scale = rho.max()
  r = rho / scale
  row = np.ones_like(r)
  out = np.empty(c)
  for k in range(c):
    v = np.cumsum(r * row)
    out[k] = v[-1]
    row = v / v[-1]
  return np.log(out) + np.log(scale)


def numpy_mva(p: np.ndarray, mu: np.ndarray, c: int) -> dict[str, np.ndarray]:
  """Throughput, E[D_i], sojourn and E[X_i] by exact mean value analysis in float64."""
  rho = p / mu
  scale = rho.max()
  r = rho / scale
  h_prev = h = np.zeros_like(r)
  theta = np.empty(c)
  for k in range(c):
    w = 1.0 + r * h
    theta[k] = (k + 1) / np.sum(r * w)
    h_prev, h = h, theta[k] * w
  return {
    "throughput": theta[-1] / scale,
    "mean_delay": h_prev / (scale * mu),
    "mean_sojourn_time": (1.0 + r * h_prev) / mu,
    "mean_queue_length": r * h,
    "log_ratio": np.log(1.0 / theta) + np.log(scale),
  }


# ---------------------------------------------------------------------------
# One size.

REFERENCE_KEYS = ("throughput", "mean_delay", "mean_sojourn_time", "mean_queue_length")


def workload(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  mu = np.exp(rng.uniform(np.log(1e-3), np.log(1e3), n))
  p = rng.dirichlet(np.ones(n))
  return p, mu


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def measure_size(n: int, c: int, args) -> dict[str, Any]:
  p64, mu64 = workload(n)
  p32, mu32 = jnp.asarray(p64, jnp.float32), jnp.asarray(mu64, jnp.float32)
  constants = queueing.BoundConstants()

  closed_forms = jax.jit(lambda p, mu: queueing.closed_forms(p, mu, c))

  gradient = jax.jit(
    jax.value_and_grad(lambda p, mu: queueing.wall_clock_bound(p, mu, c, constants, 10.0))
  )
  buzen = jax.jit(lambda p, mu: queueing.log_normalizing_constants(p, mu, c, method="buzen"))
  reps = args.repeats
  res: dict[str, Any] = {"n": n, "concurrency": c}
  res["closed_forms"] = measure(closed_forms, p32, mu32, repeats=reps)
  res["gradient"] = measure(gradient, p32, mu32, repeats=reps)
  res["buzen_jax"] = measure(buzen, p32, mu32, repeats=reps)
  # The baselines see the float32 inputs exactly, so that errors measure the arithmetic only.
  p_in, mu_in = np.asarray(p32, np.float64), np.asarray(mu32, np.float64)
  res["numpy_buzen"] = measure_host(numpy_buzen, p_in, mu_in, c, repeats=reps)
  ref = measure_host(numpy_mva, p_in, mu_in, c, repeats=reps)
  res["numpy_mva"] = ref
  forms = jax.device_get(res["closed_forms"]["out"])._asdict()
  res["error_closed_forms_f32"] = {k: rel_err(forms[k], ref["out"][k]) for k in REFERENCE_KEYS}
  log_z_buzen = np.asarray(res["buzen_jax"]["out"], np.float64)
  log_z_ref = np.concatenate([[0.0], np.cumsum(ref["out"]["log_ratio"])])
  res["error_buzen_f32_throughput"] = rel_err(
    np.exp(log_z_buzen[:-1] - log_z_buzen[1:]), np.exp(log_z_ref[:-1] - log_z_ref[1:])
  )
  res["error_numpy_buzen_vs_mva_f64"] = rel_err(res["numpy_buzen"]["out"], ref["out"]["log_ratio"])
  value, grad = res["gradient"]["out"]
  res["gradient_finite"] = bool(np.isfinite(float(value)) and np.all(np.isfinite(grad)))
  base = res["numpy_buzen"]["seconds"]
  for key in ("closed_forms", "gradient", "buzen_jax", "numpy_mva"):
    res[key]["vs_numpy_buzen"] = base / res[key]["seconds"]
  for key in ("closed_forms", "gradient", "buzen_jax", "numpy_buzen", "numpy_mva"):
    res[key].pop("out")
  return res


def measure_optimizer(n: int, c: int, steps: int) -> dict[str, float]:
  _, mu = workload(n)
  kw = dict(horizon=10.0, steps=steps)
  t0 = now()
  queueing.optimize_routing(mu, c, "wall_clock", queueing.BoundConstants(), **kw)
  first = now() - t0
  t0 = now()
  result = queueing.optimize_routing(mu, c, "wall_clock", queueing.BoundConstants(), **kw)
  sec = now() - t0
  return {
    "n": n,
    "concurrency": c,
    "steps": steps,
    "seconds": sec,
    "steps_per_s": steps / sec,
    "compile_s": max(first - sec, 0.0),
    "improvement": result.initial_value / result.value,
  }


# ---------------------------------------------------------------------------
# Report.


def ms(x: float) -> str:
  return f"{1e3 * x:,.2f}"


def report(results: list[dict], opt: dict | None, env: dict, wall: float) -> str:
  out = [
    "== environment ==\n"
    f"   devices {env['devices']}; jax {env['jax']}, jaxlib {env['jaxlib']}, numpy "
    f"{env['numpy']}, optax {env['optax']}; python {env['python']}; {env['cpu_count']} CPUs; "
    f"1-min load average {env['loadavg_start']} at start, {env['loadavg_end']} at end\n"
    "   workload: rates log-uniform in [1e-3, 1e3], Dirichlet(1) routing, float32 in JAX"
  ]
  rows = []
  labels = {
    "closed_forms": "JAX closed_forms (MVA, all per-client forms)",
    "gradient": "JAX value+grad of wall-clock bound w.r.t. p",
    "buzen_jax": "JAX Buzen log Z_0..Z_C",
    "numpy_buzen": "NumPy f64 Buzen (baseline)",
    "numpy_mva": "NumPy f64 MVA (accuracy reference)",
  }
  for r in results:
    for key, label in labels.items():
      m = r[key]
      rows.append([
        f"n={r['n']:,} C={r['concurrency']:,}", label, ms(m["seconds"]),
        ms(m["compile_s"]) if "compile_s" in m else "-",
        f"{m['vs_numpy_buzen']:.1f}x" if "vs_numpy_buzen" in m else "1.0x",
      ])  # fmt: skip
  out.append(
    "== time per evaluation (median, after compile + warm-up) ==\n"
    + table(["size", "computation", "ms", "compile ms", "vs baseline"], rows)
  )
  acc = []
  for r in results:
    e = r["error_closed_forms_f32"]
    acc.append(
      f"   n={r['n']:,} C={r['concurrency']:,}: JAX f32 closed forms vs f64 max rel error "
      + ", ".join(f"{k} {v:.1e}" for k, v in e.items())
      + f"; JAX f32 Buzen lambda(c) {r['error_buzen_f32_throughput']:.1e}; NumPy f64 Buzen vs "
      f"MVA log(Z_c/Z_c-1) {r['error_numpy_buzen_vs_mva_f64']:.1e}; gradient finite: "
      f"{r['gradient_finite']}"
    )
  out.append("== accuracy ==\n" + "\n".join(acc))
  if opt:
    out.append(
      "== optimize_routing (wall-clock objective, Adam, one jitted scan) ==\n"
      f"   n={opt['n']} C={opt['concurrency']}: {opt['steps']} steps in "
      f"{opt['seconds']:.3f} s = {opt['steps_per_s']:,.0f} steps/s (compile "
      f"{opt['compile_s']:.2f} s); bound improved {opt['improvement']:.3f}x over uniform"
    )
  out.append(f"   total wall time {wall:.1f} s")
  return "\n\n".join(out)


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  compilation_cache()  # a fresh temporary cache: the compiles it times stay cold
  start = now()
  env = {
    "devices": [str(d) for d in jax.devices()],
    "jax": jax.__version__,
    "jaxlib": importlib.metadata.version("jaxlib"),
    "numpy": np.__version__,
    "optax": optax.__version__,
    "python": platform.python_version(),
    "cpu_count": os.cpu_count(),
    "loadavg_start": loadavg(),
  }
  results = []
  for size in [s for s in args.sizes.split(",") if s]:
    n, c = (int(x) for x in size.lower().split("x"))
    results.append(measure_size(n, c, args))
    print(f"  [n={n} C={c} done]", file=sys.stderr, flush=True)
  small = min(results, key=lambda r: r["n"] * r["concurrency"])
  opt = measure_optimizer(small["n"], small["concurrency"], args.optimize_steps)
  env["loadavg_end"] = loadavg()
  wall = now() - start
  print(report(results, opt, env, wall), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"env": env, "args": vars(args), "sizes": results, "optimizer": opt,
                 "wall_s": wall}, f, indent=2)  # fmt: skip
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

"""Optimal routing (and concurrency) of asynchronous FL seen as a closed queueing network.

  python -m experiments.queueing --rates=1,1,2,4,8 --concurrency=4 --horizon=10
  python -m experiments.queueing --rate_classes=1:2,2:2,4:2,8:2,16:2 --max_concurrency=32 \
      --objective=wall_clock --horizon=10 --out=routing.json

Minimises the Generalized AsyncSGD bound over the routing p (and over C = 1..max_concurrency
with --max_concurrency) and prints p, C, the throughput and each rate class's staleness
profile (closed forms of `fedqs_jax.queueing`, spec/QUEUEING.md). --horizon is K (model
updates) for --objective=per_update and t (time, in the unit of the rates) for wall_clock.
--out writes {"routing": [p_1..p_n], "concurrency": C, ...} atomically (the wall-clock
solution with --objective=both) for a training run with --config.schedule.protocol=queueing
--config.schedule.routing=routing.json --config.data.num_clients=n. Runs in seconds on a CPU.
Bad input (flags, an unwritable --out, a solve larger than the memory available) prints one
line and exits 2 before anything is solved.

This file is intentionally short: the work is in `fedqs_jax.queueing`.
"""

import numpy as np
from absl import flags

from fedqs_jax import cli
from fedqs_jax.errors import ConfigError, check

_RATES = flags.DEFINE_list("rates", None, "Service rate mu_i of each client, e.g. 1,1,2,4,8.")
_CLASSES = flags.DEFINE_list(
  "rate_classes", None, "Rate classes as rate:count, e.g. 1:20,4:20 (instead of --rates)."
)
_CONCURRENCY = flags.DEFINE_integer("concurrency", 0, "C, the tasks in circulation (0: n).")
_MAX_CONCURRENCY = flags.DEFINE_integer(
  "max_concurrency", 0, "If > 0, also optimise C over 1..max_concurrency (leave --concurrency)."
)
_OBJECTIVE = flags.DEFINE_string("objective", "both", "per_update, wall_clock or both.")
_HORIZON = flags.DEFINE_float(
  "horizon", None, "K updates (per_update) or time t (wall_clock).", required=True
)
_CONSTANTS = flags.DEFINE_string(
  "constants", "", "Bound constants overriding the defaults, e.g. eta=0.05,sigma2=2."
)
_STEPS = flags.DEFINE_integer("steps", 1000, "Adam steps.")
_LR = flags.DEFINE_float("learning_rate", 0.05, "Adam learning rate on the logits of p.")
_OUT = flags.DEFINE_string("out", "", "Write the optimal routing and C to this JSON file.")


def parse_rates(rates, classes) -> np.ndarray:
  """[n] service rates from --rates or --rate_classes (exactly one)."""
  check((rates is None) != (classes is None), "rates", rates,
        "give exactly one of --rates=mu_1,..,mu_n and --rate_classes=rate:count,..")  # fmt: skip
  if rates is not None:
    try:
      return np.asarray([float(r) for r in rates], np.float64)
    except ValueError:
      raise ConfigError(f"rates={rates!r} is invalid: must be comma-separated numbers") from None
  out = []
  for item in classes:
    rate, _, count = item.partition(":")
    try:
      rate, count = float(rate), int(count)
    except ValueError:
      raise ConfigError(
        f"rate_classes={item!r} is invalid: each class must be rate:count, e.g. 2.5:10"
      ) from None
    check(count >= 1, "rate_classes", item, "each class's count must be >= 1")
    out += [rate] * count
  return np.asarray(out, np.float64)


def parse_constants(text: str):
  """BoundConstants with the --constants overrides ("eta=0.05,sigma2=2")."""
  from fedqs_jax import queueing

  fields = {}
  for item in [s for s in text.split(",") if s.strip()]:
    name, _, value = item.partition("=")
    name = name.strip()
    check(name in queueing.BoundConstants._fields, "constants", item,
          f"names must be among {queueing.BoundConstants._fields}")  # fmt: skip
    try:
      fields[name] = float(value)
    except ValueError:
      raise ConfigError(f"constants.{name}={value!r} is invalid: must be a number") from None
  return queueing.validate_constants(queueing.BoundConstants()._replace(**fields))


def solve_objective(q, mu, objective, constants):
  """The optimised routing of one objective: over p, or over (p, C) with --max_concurrency."""
  kw = dict(horizon=_HORIZON.value, steps=_STEPS.value, learning_rate=_LR.value)
  if _MAX_CONCURRENCY.value > 0:
    sweep = q.optimize_concurrency(
      mu, range(1, _MAX_CONCURRENCY.value + 1), objective, constants, **kw
    )
    print(f"\n[{objective}] optimised bound and throughput per concurrency C:")
    for c, v, lam in zip(sweep.concurrencies, sweep.values, sweep.throughputs, strict=True):
      mark = "  <- best" if c == sweep.best.concurrency else ""
      print(f"   C={c:4d}  bound {v:.6g}  throughput {lam:.4g}{mark}")
    return sweep.best
  c = _CONCURRENCY.value or mu.size
  return q.optimize_routing(mu, c, objective, constants, **kw)


def solve_bytes(
  num_clients: int, num_concurrencies: int, max_concurrency: int, steps: int, itemsize: int
) -> int:
  """About the memory of one objective's optimisation: `num_concurrencies` values of C
  optimised at once (vmapped), each through the MVA scan of `max_concurrency` steps whose
  gradient (a reverse scan) keeps a few [max_concurrency, n] residuals. An upper bound of
  XLA's memory analysis for n = 2..5000 clients and C up to 3000 (tests/test_cli_errors.py)."""
  per_c = max_concurrency * (2 * num_clients + 6) + steps + 24 * num_clients + 16
  return itemsize * num_concurrencies * per_c + 2**20  # + XLA's small buffers


def check_memory(num_clients: int) -> None:
  """Refuses a --concurrency / --max_concurrency whose solve does not fit in the memory
  available now (before anything is compiled)."""
  import jax.numpy as jnp

  from fedqs_jax import memory

  m, c = _MAX_CONCURRENCY.value, _CONCURRENCY.value or num_clients
  field, value = ("max_concurrency", m) if m > 0 else ("concurrency", _CONCURRENCY.value)
  itemsize = jnp.dtype(jnp.result_type(1.0)).itemsize
  need = solve_bytes(num_clients, max(m, 1), m or c, _STEPS.value, itemsize)
  have = memory.available_bytes()
  gib = 2.0**30
  what = f"C = 1..{m}" if m > 0 else f"C = {c}"
  check(need <= have, field, value,
        f"solving {what} for {num_clients} clients needs about {need / gib:.3g} GiB, but "
        f"{have / gib:.3g} GiB are available: lower --{field} (the memory grows as "
        f"{'its square' if m > 0 else 'it'} times the clients)")  # fmt: skip


def report(q, mu, result) -> None:
  uniform = np.full(mu.size, 1.0 / mu.size)
  lam_u = float(q.throughput(uniform, mu, result.concurrency))
  unit = "updates" if result.objective == "per_update" else "time units"
  print(
    f"\n== objective {result.objective} (horizon {_HORIZON.value:g} {unit}), "
    f"C = {result.concurrency} ==\n"
    f"   bound {result.value:.6g} (uniform routing: {result.initial_value:.6g}); throughput "
    f"{result.throughput:.5g} updates per time unit (uniform: {lam_u:.5g}); mean staleness "
    f"sum_i p_i E[D_i] = C - 1 = {result.concurrency - 1}"
  )
  print(q.profile_table(result.p, mu, result.concurrency))


def run(argv) -> None:
  cli.check_no_arguments(argv)
  from fedqs_jax import io
  from fedqs_jax import queueing as q  # after flag parsing: importing jax is not free

  mu = q.validate_rates(parse_rates(_RATES.value, _CLASSES.value))
  check(_OBJECTIVE.value in (*q.OBJECTIVES, "both"), "objective", _OBJECTIVE.value,
        f"must be one of {(*q.OBJECTIVES, 'both')}")  # fmt: skip
  check(_CONCURRENCY.value >= 0, "concurrency", _CONCURRENCY.value, "must be >= 1 (0: n)")
  check(_MAX_CONCURRENCY.value >= 0, "max_concurrency", _MAX_CONCURRENCY.value, "must be >= 0")
  check(not (_MAX_CONCURRENCY.value and _CONCURRENCY.value), "concurrency", _CONCURRENCY.value,
        "give --concurrency or --max_concurrency, not both")  # fmt: skip
  horizon = _HORIZON.value
  check(bool(np.isfinite(horizon)) and horizon > 0, "horizon", horizon, "must be finite and > 0")
  constants = parse_constants(_CONSTANTS.value)
  if _OUT.value:
    cli.check_writable_file("out", _OUT.value)
  check_memory(mu.size)
  print(f"{mu.size} clients, rates {np.unique(mu).tolist()}; constants {constants._asdict()}")
  objectives = q.OBJECTIVES if _OBJECTIVE.value == "both" else (_OBJECTIVE.value,)
  results = {o: solve_objective(q, mu, o, constants) for o in objectives}
  for result in results.values():
    report(q, mu, result)
  if len(results) == 2:
    a, b = results["per_update"], results["wall_clock"]
    slow = mu == mu.min()
    print(
      f"\nper_update vs wall_clock: throughput {a.throughput:.4g} vs {b.throughput:.4g} "
      f"({a.throughput / b.throughput:.2f}x); routing mass on the slowest class "
      f"{a.p[slow].sum():.4f} vs {b.p[slow].sum():.4f}"
    )
  if _OUT.value:
    best = results.get("wall_clock") or results["per_update"]
    io.write_json(
      _OUT.value,
      {
        "routing": best.p.tolist(),
        "concurrency": best.concurrency,
        "objective": best.objective,
        "horizon": _HORIZON.value,
        "throughput": best.throughput,
        "bound": best.value,
        "rates": mu.tolist(),
        "constants": constants._asdict(),
      },
    )
    print(f"\nwrote {_OUT.value} ({best.objective}: routing of {mu.size} clients, C = "
          f"{best.concurrency})")  # fmt: skip


if __name__ == "__main__":
  cli.run(run)  # bad input (flags too): one line, exit 2

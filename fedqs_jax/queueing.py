"""Asynchronous FL as a closed queueing network: closed forms and routing optimisation.

Sources: Alahyane, Comte, Jonckheere, Moulines, "Optimizing Asynchronous Federated Learning: A
Delicate Trade-Off Between Model-Parameter Staleness and Update Frequency" (ECAI 2025,
arXiv 2502.08206); Leconte, Jonckheere, Samsonov, Moulines, "Queuing dynamics of asynchronous
Federated Learning" (AISTATS 2024). The contract is `spec/QUEUEING.md`.

Model. `n` clients, each a single-server FIFO queue with exponential service of rate `mu_i`
(one task = one local computation). `C` tasks (the concurrency) circulate: when a task
completes the server applies one update (k -> k + 1) and dispatches a new task, carrying
w_(k+1), to client J ~ p (the routing probabilities). With relative loads rho_i = p_i / mu_i
the stationary law of the queue lengths X on {x : sum_i x_i = C} is the product form
(Gordon-Newell)

    pi_C(x) = prod_i rho_i^(x_i) / Z_C,   Z_c = sum_{|x| = c} prod_i rho_i^(x_i).

Closed forms (all exact, all differentiable JAX functions of (p, mu); `C` is a static int):

    lambda(C)        = Z_(C-1) / Z_C                         updates per unit time
    P(X_i >= k)      = rho_i^k Z_(C-k) / Z_C
    E_C[X_i]         = sum_{k=1..C} rho_i^k Z_(C-k) / Z_C
    sojourn_i        = (1 + E_(C-1)[X_i]) / mu_i             (arrival theorem)
    E[D_i]           = E_(C-1)[X_i] / p_i                     (discrete Little's law)

Relative delay convention: a task dispatched with model version v (v updates had been applied)
and applied at update k (it turns w_k into w_(k+1)) has D = k - v, the number of *other* tasks'
updates applied while it was in the network; D = 0 for every task when C = 1. The "D + 1"
convention (`plus_one=True`) counts its own update too. Since p_i E[D_i] = E_(C-1)[X_i],

    sum_i p_i E[D_i] = C - 1                                 exactly, for every p:

routing moves staleness between clients; the average depends on C only. The naive estimate
E_C[X_i] / p_i (`naive_delay`) uses the time-stationary law pi_C where a dispatched task sees
pi_(C-1), and overestimates.

How Z is computed. Buzen's recursion (g_0 = 1; for each client i, for c = 1..C:
g_c += rho_i g_(c-1); Z_c = g_c) is implemented (`method="buzen"`) with its loops exchanged: a
scan over populations c whose step is a cumulative sum over clients, each row rescaled by its
last entry, so that it holds the ratios Z_c / Z_(c-1) and never overflows. Everything else uses
the equivalent ratio form of the same recursion, exact mean value analysis (MVA, Reiser and
Lavenberg 1980): with r_i = rho_i / max_j rho_j, theta_c = Z_(c-1)(r) / Z_c(r) and
h_i(c) = E_c[X_i] / r_i,

    h_i(0) = 0;   w_i = 1 + r_i h_i(c-1) = 1 + E_(c-1)[X_i];
    theta_c = c / sum_i r_i w_i;   h_i(c) = theta_c w_i         for c = 1..C,

so that lambda(c) = theta_c / max_j rho_j and E_c[X_i] = r_i h_i(c) (the sum over clients of
E_c[X_i] is c by construction). All its terms are positive and bounded (theta_c <= 1 because
theta_c * max_j r_j is a utilisation; h_i(c) <= c), so it needs no logarithms and no rescaling
per step, costs O(n C) with an [n] carry, and its gradient (a reverse scan) stores a few
[C, n] residuals (40 MB each for n = 10,000 and C = 1,000 in float32). Measured at that size (rates
log-uniform in 1e-3..1e3, Dirichlet(1) routing; benchmarks/queueing.py) against float64:
float32 MVA is within 3e-7 (relative) and 7-15 times faster than float32 Buzen, whose rows
accumulate rounding over the C steps (1e-3 relative). E[D_i] = h_i(C-1) / (max_j rho_j mu_i)
is finite even at p_i = 0 (its limit, lambda(C-1) / mu_i). The scale max_j rho_j is a
constant for autodiff (`stop_gradient`): every quantity is exactly invariant to it, so
gradients stay exact.

Routing optimisation. With BoundConstants (c1, c2, c3, A, L, sigma2, M2, eta) the per-update
bound of Generalized AsyncSGD after K updates is

    G(p, C) = c1 A / (eta K) + c2 eta L (sigma2 + M2) (1/n^2) sum_i 1 / p_i
              + c3 eta^2 L^2 (sigma2 + M2) (1/n^2) sum_i E[D_i] / p_i,

and the wall-clock bound after time t replaces K by lambda(p, C) t. `optimize_routing`
minimises either over p = softmax(theta) with Adam (one jitted `lax.scan` over steps);
`optimize_concurrency` enumerates C (one compiled program for all C: the MVA scan runs to the
largest C and freezes the state beyond each network's own C). The per-update bound does not
see throughput, so its optimum parks tasks at slow clients (large p_i / mu_i) and cuts
lambda; the wall-clock bound trades staleness against throughput (the paper's finding).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from fedqs_jax.errors import ConfigError, check

OBJECTIVES = ("per_update", "wall_clock")
METHODS = ("mva", "buzen")

# |sum_i p_i - 1| <= SUM_TOLERANCE_BASE + n * FLOAT32_EPS (checked in float64 on the host): the
# worst-case error of rounding n probabilities to float32 and normalising them there, so that a
# float32 softmax or p / p.sum() over n = 10,000 clients passes, while an unnormalised weight
# vector or a typo ("0.33,0.33,0.33") fails.
FLOAT32_EPS = float(np.finfo(np.float32).eps)
SUM_TOLERANCE_BASE = 1e-6


def sum_tolerance(num_clients: int) -> float:
  """How far from 1 the routing probabilities of `num_clients` clients may sum (see above)."""
  return SUM_TOLERANCE_BASE + num_clients * FLOAT32_EPS


# ---------------------------------------------------------------------------
# Validation (host side).


def _concurrency(concurrency: Any, field: str = "concurrency") -> int:
  """`concurrency` as a Python int >= 1, or `ConfigError`."""
  if isinstance(concurrency, bool):
    raise ConfigError(f"{field}={concurrency!r} is invalid: must be an integer >= 1")
  try:
    c = operator.index(concurrency)
  except TypeError:
    raise ConfigError(f"{field}={concurrency!r} is invalid: must be an integer >= 1") from None
  check(c >= 1, field, c, "must be an integer >= 1 (tasks in circulation)")
  return int(c)


def _host_vector(x: Any, field: str) -> np.ndarray:
  try:
    v = np.asarray(x, dtype=np.float64)
  except (TypeError, ValueError):
    raise ConfigError(f"{field}={x!r} is invalid: must be a vector of numbers") from None
  check(v.ndim == 1 and v.size >= 1, field, v.shape, "must be a non-empty vector of shape [n]")
  return v


def validate_rates(mu: Any) -> np.ndarray:
  """The service rates [n] as float64, or `ConfigError` (non-finite or <= 0)."""
  m = _host_vector(mu, "rates")
  bad = ~(np.isfinite(m) & (m > 0))
  first = int(np.argmax(bad))
  check(not bad.any(), "rates", float(m[first]),
        f"every service rate mu_i must be finite and > 0 (entry {first} is shown)")  # fmt: skip
  return m


def validate(p: Any, mu: Any, concurrency: Any) -> tuple[np.ndarray, np.ndarray, int]:
  """Checks a closed network's parameters on the host; raises one clear `ConfigError`.

  Args:
    p: [n] routing probabilities: finite, >= 0, summing to 1 within `sum_tolerance(n)`.
    mu: [n] service rates: finite and > 0.
    concurrency: C, an integer >= 1 (a Python or NumPy int; not a float, not a bool).

  Returns:
    (p, mu) as float64 NumPy arrays and C as an int.

  Raises:
    ConfigError: naming the field (`routing`, `rates`, `concurrency`) and the allowed range.
  """
  c = _concurrency(concurrency)
  m = validate_rates(mu)
  q = _host_vector(p, "routing")
  check(q.shape == m.shape, "routing", q.shape, f"must have the shape of rates, {m.shape}")
  check(bool(np.all(np.isfinite(q))), "routing", q[~np.isfinite(q)][:1].tolist(),
        "probabilities must be finite")  # fmt: skip
  low = int(np.argmin(q))
  check(bool(q[low] >= 0), "routing", float(q[low]),
        f"probabilities must be >= 0 (the smallest, entry {low}, is shown)")  # fmt: skip
  tol = sum_tolerance(q.size)
  check(abs(q.sum() - 1.0) <= tol, "routing", float(q.sum()),
        f"probabilities must sum to 1 (within {tol:.2g}; the sum is shown)")  # fmt: skip
  return q, m, c


def _is_traced(*xs) -> bool:
  return any(isinstance(x, jax.core.Tracer) for x in xs)


def _checked(p, mu, concurrency) -> int:
  """Validates host values (skipped for tracers, i.e. inside jit/grad/vmap); returns C."""
  c = _concurrency(concurrency)
  if not _is_traced(p, mu):
    validate(p, mu, c)
  return c


def _as_float(p, mu) -> tuple[jax.Array, jax.Array]:
  dtype = jnp.result_type(p, mu, 1.0)
  return jnp.asarray(p, dtype), jnp.asarray(mu, dtype)


# ---------------------------------------------------------------------------
# The recursions.


class Solution(NamedTuple):
  """The MVA recursion's state for one network (shapes: n clients, Cmax = scan length).

  All fields are in the scaled units r = rho / scale unless said otherwise.
  """

  scale: jax.Array  # [] max_i rho_i (a constant for autodiff)
  r: jax.Array  # [n] rho_i / scale, in [0, 1]
  theta: jax.Array  # [Cmax] theta_c = Z_(c-1)(r) / Z_c(r) = scale * lambda(c), c = 1..Cmax
  h_prev: jax.Array  # [n] E_(C-1)[X_i] / r_i
  h: jax.Array  # [n] E_C[X_i] / r_i
  throughput: jax.Array  # [] lambda(C) = Z_(C-1) / Z_C, unscaled


@functools.partial(jax.jit, static_argnames="max_concurrency")
def solve(p, mu, concurrency, max_concurrency: int) -> Solution:
  """Exact mean value analysis of the closed network, c = 1..max_concurrency (no validation).

  Args:
    p: [n] routing probabilities (visit ratios).
    mu: [n] service rates.
    concurrency: C, an int or a traced int scalar in [1, max_concurrency]: the state freezes
      after step C, so one compiled program serves every C <= max_concurrency (and vmaps);
      None for C = max_concurrency without the masking.
    max_concurrency: the static scan length.

  Returns:
    The `Solution` at population C (`theta` holds every c up to max_concurrency).
  """
  p, mu = _as_float(p, mu)
  rho = p / mu
  scale = lax.stop_gradient(jnp.max(rho))
  r = rho / scale

  def step(carry, c):
    h_prev, h, theta_c = carry
    w = 1.0 + r * h  # 1 + E_(c-1)[X_i]
    theta = c / jnp.sum(r * w)
    if concurrency is None:
      return (h, theta * w, theta), theta
    on = c <= jnp.asarray(concurrency, r.dtype)
    new = (jnp.where(on, h, h_prev), jnp.where(on, theta * w, h), jnp.where(on, theta, theta_c))
    return new, theta

  zeros = jnp.zeros_like(r)
  cs = jnp.arange(1, max_concurrency + 1).astype(r.dtype)
  (h_prev, h, theta_c), theta = lax.scan(step, (zeros, zeros, jnp.zeros((), r.dtype)), cs)
  return Solution(scale, r, theta, h_prev, h, theta_c / scale)


def _solution(p, mu, concurrency) -> tuple[Solution, int]:
  c = _checked(p, mu, concurrency)
  return solve(p, mu, None, max_concurrency=c), c


@functools.partial(jax.jit, static_argnames="concurrency")
def _buzen_log_ratios(r, concurrency: int) -> jax.Array:
  """[C] log(Z_c(r) / Z_(c-1)(r)), c = 1..C, by Buzen's recursion with exchanged loops.

  Row c holds g^(i)_c = Z_c(clients 1..i) = sum_{j <= i} r_j g^(j)_(c-1) (the client-order
  update g_c += r_i g_(c-1), unrolled), divided by its last entry Z_c.
  """

  def step(row, _):
    v = jnp.cumsum(r * row)
    total = v[-1]
    return v / total, total

  _, totals = lax.scan(step, jnp.ones_like(r), None, length=concurrency)
  return jnp.log(totals)


# ---------------------------------------------------------------------------
# Closed forms: public, differentiable, validated when called with host values.


def log_normalizing_constants(p, mu, concurrency: int, *, method: str = "mva") -> jax.Array:
  """[C+1] log Z_0..log Z_C of the product form (Z_0 = 1), for rho = p / mu.

  Args:
    p: [n] routing probabilities.
    mu: [n] service rates.
    concurrency: C (static).
    method: "mva" (the ratio recursion, accurate to float precision) or "buzen" (Buzen's
      recursion, rows rescaled; in float32 its relative error grows with C, ~1e-3 at
      n = 10,000, C = 1,000). Both are O(n C) and exact in exact arithmetic.
  """
  check(method in METHODS, "method", method, f"must be one of {METHODS}")
  c = _checked(p, mu, concurrency)
  if method == "mva":
    sol = solve(p, mu, None, max_concurrency=c)
    log_ratio, scale = -jnp.log(sol.theta), sol.scale
  else:
    pf, muf = _as_float(p, mu)
    rho = pf / muf
    scale = lax.stop_gradient(jnp.max(rho))
    log_ratio = _buzen_log_ratios(rho / scale, c)
  log_z = jnp.cumsum(log_ratio) + jnp.arange(1, c + 1) * jnp.log(scale)
  return jnp.concatenate([jnp.zeros((1,), log_z.dtype), log_z])


class ClosedForms(NamedTuple):
  """Every per-client closed form of one network, from one MVA pass (n clients)."""

  throughput: jax.Array  # [] lambda = Z_(C-1) / Z_C
  utilisation: jax.Array  # [n] P(X_i >= 1)
  mean_queue_length: jax.Array  # [n] E_C[X_i]
  mean_sojourn_time: jax.Array  # [n] (1 + E_(C-1)[X_i]) / mu_i
  mean_delay: jax.Array  # [n] E[D_i] = E_(C-1)[X_i] / p_i
  naive_delay: jax.Array  # [n] E_C[X_i] / p_i


def closed_forms(p, mu, concurrency: int) -> ClosedForms:
  """All closed forms of `ClosedForms` from one scan (the functions below each run one)."""
  sol, c = _solution(p, mu, concurrency)
  _, mu = _as_float(p, mu)
  return ClosedForms(
    throughput=sol.throughput,
    utilisation=sol.r * sol.theta[c - 1],
    mean_queue_length=sol.r * sol.h,
    mean_sojourn_time=(1.0 + sol.r * sol.h_prev) / mu,
    mean_delay=sol.h_prev / (sol.scale * mu),
    naive_delay=sol.h / (sol.scale * mu),
  )


def throughput(p, mu, concurrency: int) -> jax.Array:
  """[] lambda = Z_(C-1) / Z_C: model updates per unit time."""
  return closed_forms(p, mu, concurrency).throughput


def utilisation(p, mu, concurrency: int) -> jax.Array:
  """[n] P(X_i >= 1) = rho_i lambda: the fraction of time client i computes."""
  return closed_forms(p, mu, concurrency).utilisation


def update_share(p, mu, concurrency: int) -> jax.Array:
  """[n] lambda_i / lambda: the fraction of updates client i supplies (equal to p_i).

  Derived as a ratio of rates, lambda_i = mu_i P(X_i >= 1), so that the identity share = p is
  a check of the closed forms rather than a definition.
  """
  forms = closed_forms(p, mu, concurrency)
  _, mu = _as_float(p, mu)
  return mu * forms.utilisation / forms.throughput


def queue_tail(p, mu, concurrency: int, k) -> jax.Array:
  """[n] P(X_i >= k) = rho_i^k Z_(C-k) / Z_C (1 for k <= 0, 0 for k > C).

  Args:
    p: [n] routing probabilities.
    mu: [n] service rates.
    concurrency: C (static).
    k: an int (or a traced int scalar).
  """
  sol, c = _solution(p, mu, concurrency)
  k = jnp.asarray(k, jnp.int32)
  kk = jnp.clip(k, 0, c)
  # top[k] = log(Z_(C-k)(r) / Z_C(r)) = sum_{j = C-k+1..C} log theta_j <= 0.
  top = jnp.concatenate([jnp.zeros((1,), sol.theta.dtype), jnp.cumsum(jnp.log(sol.theta[::-1]))])
  r_k = jnp.where(kk == 0, 1.0, jnp.power(sol.r, jnp.maximum(kk, 1)))
  return jnp.where(k > c, 0.0, r_k * jnp.exp(top[kk]))


def mean_queue_length(p, mu, concurrency: int) -> jax.Array:
  """[n] E_C[X_i] = sum_{k=1..C} rho_i^k Z_(C-k) / Z_C (tasks at client i, queued or served)."""
  return closed_forms(p, mu, concurrency).mean_queue_length


def mean_sojourn_time(p, mu, concurrency: int) -> jax.Array:
  """[n] (1 + E_(C-1)[X_i]) / mu_i: mean time from dispatch to completion at client i."""
  return closed_forms(p, mu, concurrency).mean_sojourn_time


def mean_delay(p, mu, concurrency: int, plus_one: bool = False) -> jax.Array:
  """[n] E[D_i] = E_(C-1)[X_i] / p_i: mean relative delay (staleness, in server updates).

  D = k - v for a task dispatched with version v and applied at update k (see the module
  docstring); `plus_one` returns E[D_i] + 1. sum_i p_i E[D_i] = C - 1; E[D_i] = 0 for C = 1.
  Computed as h_i(C-1) / (max_j rho_j mu_i): finite at p_i = 0 (the limit lambda(C-1) / mu_i).
  """
  delay = closed_forms(p, mu, concurrency).mean_delay
  return delay + 1.0 if plus_one else delay


def naive_delay(p, mu, concurrency: int) -> jax.Array:
  """[n] E_C[X_i] / p_i: the naive estimate from the time-stationary law pi_C (>= `mean_delay`).

  A task dispatched to client i sees the other C - 1 tasks in pi_(C-1) (arrival theorem), not
  in pi_C; hence the overestimate, by sum_i p_i (naive - true) = C - (C - 1) = 1 on average.
  """
  return closed_forms(p, mu, concurrency).naive_delay


# ---------------------------------------------------------------------------
# Convergence bounds.


class BoundConstants(NamedTuple):
  """Constants of the Generalized AsyncSGD bound (Leconte et al. 2024; Alahyane et al. 2025).

  Defaults: unit problem constants and a step size eta = 0.1. Under uniform routing the
  staleness term is then eta L (C - 1) times the noise term, so both matter at C ~ 10. They
  are inputs, not estimates for a particular model or data set.
  """

  c1: float = 1.0  # numerical constant of the optimisation term
  c2: float = 1.0  # numerical constant of the noise term
  c3: float = 1.0  # numerical constant of the staleness term
  A: float = 1.0  # F(w_0) - inf F
  L: float = 1.0  # smoothness of the local losses
  sigma2: float = 1.0  # s^2: variance of a local stochastic gradient
  M2: float = 1.0  # M^2: bound on the dissimilarity of the local gradients (heterogeneity)
  eta: float = 0.1  # server step size


DEFAULT_CONSTANTS = BoundConstants()


def validate_constants(constants: BoundConstants) -> BoundConstants:
  """`constants` with float fields, or `ConfigError` (every field must be finite and > 0).

  sigma2 and M2 may be 0 (not both: then the bound does not depend on routing).
  """
  check(isinstance(constants, BoundConstants), "constants", type(constants).__name__,
        "must be a fedqs_jax.queueing.BoundConstants")  # fmt: skip
  out = {}
  for name, value in constants._asdict().items():
    try:
      v = float(value)
    except (TypeError, ValueError):
      raise ConfigError(f"constants.{name}={value!r} is invalid: must be a number") from None
    low_ok = v >= 0 if name in ("sigma2", "M2") else v > 0
    check(np.isfinite(v) and low_ok, f"constants.{name}", value,
          "must be finite and " + (">= 0" if name in ("sigma2", "M2") else "> 0"))  # fmt: skip
    out[name] = v
  check(out["sigma2"] + out["M2"] > 0, "constants.sigma2", out["sigma2"],
        "sigma2 + M2 must be > 0")  # fmt: skip
  return BoundConstants(**out)


def _bound(p, delay, num_updates, k: BoundConstants) -> jax.Array:
  n = p.shape[0]
  noise = k.sigma2 + k.M2
  optimisation = k.c1 * k.A / (k.eta * num_updates)
  variance = k.c2 * k.eta * k.L * noise * jnp.sum(1.0 / p) / n**2
  staleness = k.c3 * k.eta**2 * k.L**2 * noise * jnp.sum(delay / p) / n**2
  return optimisation + variance + staleness


def _check_horizon(horizon, field: str = "horizon") -> None:
  if not _is_traced(horizon):
    h = np.asarray(horizon, dtype=np.float64)
    check(h.ndim == 0 and np.isfinite(h) and h > 0, field, horizon, "must be finite and > 0")


def per_update_bound(p, mu, concurrency: int, constants: BoundConstants, num_updates) -> jax.Array:
  """[] G(p, C) after K = `num_updates` updates (module docstring; E[D_i] is `mean_delay`)."""
  _check_horizon(num_updates, "num_updates")
  forms = closed_forms(p, mu, concurrency)
  return _bound(_as_float(p, mu)[0], forms.mean_delay, num_updates, constants)


def wall_clock_bound(p, mu, concurrency: int, constants: BoundConstants, time) -> jax.Array:
  """[] G(p, C) with K = lambda(p, C) * `time`: the updates available in wall-clock time."""
  _check_horizon(time, "time")
  forms = closed_forms(p, mu, concurrency)
  return _bound(_as_float(p, mu)[0], forms.mean_delay, forms.throughput * time, constants)


def _objective_value(objective: str, p, mu, concurrency, max_concurrency, constants, horizon):
  """The bound of `objective` (traced concurrency allowed); also returns lambda."""
  sol = solve(p, mu, concurrency, max_concurrency=max_concurrency)
  delay = sol.h_prev / (sol.scale * mu)
  k = horizon if objective == "per_update" else sol.throughput * horizon
  return _bound(p, delay, k, constants), sol.throughput


# ---------------------------------------------------------------------------
# Optimisation.


class RoutingResult(NamedTuple):
  """The best routing found for one concurrency (host values; n clients, S steps)."""

  p: np.ndarray  # [n] float64 routing probabilities (renormalised to sum to 1)
  value: float  # the objective at p
  concurrency: int  # C
  objective: str  # "per_update" or "wall_clock"
  throughput: float  # lambda(p, C)
  initial_value: float  # the objective at the initial routing (uniform by default)
  history: np.ndarray  # [S] the objective at each Adam step's iterate


class ConcurrencyResult(NamedTuple):
  """The enumeration over concurrencies (m values of C)."""

  best: RoutingResult  # the C with the lowest objective value, with its optimised routing
  concurrencies: np.ndarray  # [m] the C tried
  values: np.ndarray  # [m] the optimised objective for each C
  throughputs: np.ndarray  # [m] lambda at each C's optimised routing
  routings: np.ndarray  # [m, n] each C's optimised routing


@functools.lru_cache(maxsize=32)
def _routing_optimizer(objective: str, steps: int, learning_rate: float, max_concurrency: int):
  """A jitted fn(mu, concurrency, constants, horizon, theta0) -> best iterate of Adam.

  Returns (theta [n], value [], throughput [], initial value [], history [steps]); the best
  iterate is the lowest value among theta_0..theta_steps, so it never exceeds the initial one.
  Cached per static setting; vmappable over `concurrency`.
  """
  opt = optax.adam(learning_rate)

  def value(theta, mu, concurrency, constants, horizon):
    p = jax.nn.softmax(theta)
    return _objective_value(objective, p, mu, concurrency, max_concurrency, constants, horizon)

  grad_fn = jax.value_and_grad(value, has_aux=True)

  def run(mu, concurrency, constants, horizon, theta0):
    def step(carry, _):
      theta, state, best = carry
      (v, lam), g = grad_fn(theta, mu, concurrency, constants, horizon)
      better = v < best[1]
      best = jax.tree.map(lambda new, old: jnp.where(better, new, old), (theta, v, lam), best)
      updates, state = opt.update(g, state, theta)
      return (optax.apply_updates(theta, updates), state, best), v

    v0, lam0 = value(theta0, mu, concurrency, constants, horizon)
    init = (theta0, opt.init(theta0), (theta0, v0, lam0))
    (theta, _, best), history = lax.scan(step, init, None, length=steps)
    v_last, lam_last = value(theta, mu, concurrency, constants, horizon)
    better = v_last < best[1]
    best = jax.tree.map(
      lambda new, old: jnp.where(better, new, old), (theta, v_last, lam_last), best
    )
    return (*best, v0, history)

  return jax.jit(run), jax.jit(jax.vmap(run, in_axes=(None, 0, None, None, None)))


def _optimizer_inputs(mu, objective, constants, horizon, steps, learning_rate, init):
  m = validate_rates(mu)
  check(objective in OBJECTIVES, "objective", objective, f"must be one of {OBJECTIVES}")
  constants = validate_constants(constants)
  _check_horizon(horizon)
  check(isinstance(steps, (int, np.integer)) and not isinstance(steps, bool) and steps >= 1,
        "steps", steps, "must be an integer >= 1")  # fmt: skip
  lr_ok = isinstance(learning_rate, (int, float, np.number)) and not isinstance(learning_rate, bool)
  check(lr_ok and np.isfinite(learning_rate) and learning_rate > 0, "learning_rate",
        learning_rate, "must be finite and > 0")  # fmt: skip
  if init is None:
    theta0 = np.zeros_like(m)
  else:
    try:
      q, _, _ = validate(init, m, 1)
    except ConfigError as e:
      raise ConfigError(f"init (the initial routing): {e}") from None
    check(bool(np.all(q > 0)), "init", float(q.min()),
          "initial routing probabilities must be > 0 (p = softmax(theta))")  # fmt: skip
    theta0 = np.log(q)
  dtype = jnp.result_type(1.0)
  consts = BoundConstants(*(jnp.asarray(v, dtype) for v in constants))
  return (jnp.asarray(m, dtype), consts, jnp.asarray(horizon, dtype), jnp.asarray(theta0, dtype))


def _result(objective, concurrency, theta, value, lam, v0, history) -> RoutingResult:
  p = np.asarray(jax.nn.softmax(jnp.asarray(theta)), np.float64)
  return RoutingResult(
    p=p / p.sum(),
    value=float(value),
    concurrency=int(concurrency),
    objective=objective,
    throughput=float(lam),
    initial_value=float(v0),
    history=np.asarray(history),
  )


def optimize_routing(
  mu,
  concurrency: int,
  objective: str,
  constants: BoundConstants = DEFAULT_CONSTANTS,
  *,
  horizon: float,
  steps: int = 1000,
  learning_rate: float = 0.05,
  init=None,
) -> RoutingResult:
  """Minimises a convergence bound over the routing p = softmax(theta) with Adam.

  Args:
    mu: [n] service rates.
    concurrency: C >= 1.
    objective: "per_update" (G after K = `horizon` updates) or "wall_clock" (G after time
      t = `horizon`, K = lambda(p, C) t).
    constants: the bound's constants.
    horizon: K (per_update) or t (wall_clock), > 0.
    steps: Adam steps (one jitted `lax.scan`).
    learning_rate: Adam's step size on theta (the logits of p).
    init: [n] initial routing (strictly positive); default uniform.

  Returns:
    The best iterate (never worse than `init`), with its value, throughput and the history.
  """
  c = _concurrency(concurrency)
  mu_j, consts, horizon_j, theta0 = _optimizer_inputs(
    mu, objective, constants, horizon, steps, learning_rate, init
  )
  run, _ = _routing_optimizer(objective, int(steps), float(learning_rate), c)
  out = run(mu_j, None, consts, horizon_j, theta0)  # None: C = max_concurrency, no masking
  return _result(objective, c, *jax.device_get(out))


def optimize_concurrency(
  mu,
  concurrencies: Sequence[int],
  objective: str,
  constants: BoundConstants = DEFAULT_CONSTANTS,
  horizon: float | None = None,
  *,
  steps: int = 1000,
  learning_rate: float = 0.05,
  init=None,
) -> ConcurrencyResult:
  """Optimises the routing for every C in `concurrencies` (one vmapped program); keeps the best.

  Args: as `optimize_routing`, with `concurrencies` the C to try (one compiled program: the
  scan runs to max(concurrencies)); `horizon` is required.

  Returns:
    The best C's `RoutingResult` and every C's optimised value, throughput and routing.

  Under the per-update objective the best C is always the smallest (staleness only grows with
  C and the bound does not see throughput); the wall-clock one typically has an interior C.
  """
  check(horizon is not None, "horizon", horizon, "must be given (K or t, > 0)")
  check(len(concurrencies) >= 1, "concurrencies", concurrencies, "must list at least one C")
  cs = np.asarray([_concurrency(c, "concurrencies") for c in concurrencies], np.int32)
  mu_j, consts, horizon_j, theta0 = _optimizer_inputs(
    mu, objective, constants, horizon, steps, learning_rate, init
  )
  _, run_all = _routing_optimizer(objective, int(steps), float(learning_rate), int(cs.max()))
  theta, value, lam, v0, history = jax.device_get(
    run_all(mu_j, jnp.asarray(cs), consts, horizon_j, theta0)
  )
  i = int(np.argmin(value))
  routings = np.asarray(jax.nn.softmax(jnp.asarray(theta), axis=-1), np.float64)
  return ConcurrencyResult(
    best=_result(objective, cs[i], theta[i], value[i], lam[i], v0[i], history[i]),
    concurrencies=cs,
    values=np.asarray(value, np.float64),
    throughputs=np.asarray(lam, np.float64),
    routings=routings / routings.sum(-1, keepdims=True),
  )


def profile(p, mu, concurrency: int) -> dict[str, Any]:
  """Host summary of a network, for printing: floats and [n] float64 arrays.

  Keys: concurrency, throughput, mean_staleness (sum_i p_i E[D_i] = C - 1), and per client:
  routing, rates, share, utilisation, mean_queue_length, mean_sojourn_time, mean_delay,
  naive_delay.
  """
  q, m, c = validate(p, mu, concurrency)
  forms = jax.device_get(closed_forms(q, m, c))._asdict()
  lam = float(forms.pop("throughput"))
  forms = {k: np.asarray(v, np.float64) for k, v in forms.items()}
  return {
    "concurrency": c,
    "throughput": lam,
    "mean_staleness": float(np.sum(q * forms["mean_delay"])),
    "routing": q,
    "rates": m,
    "share": m * forms["utilisation"] / lam,
    **forms,
  }


def profile_table(p, mu, concurrency: int) -> str:
  """A plain-text table of `profile`, one row per distinct service rate (slowest first).

  Per-client columns are means over the clients of the class (identical when the routing is
  symmetric within classes, as the optimisers' results are from a uniform start).
  """
  prof = profile(p, mu, concurrency)
  rates = prof["rates"]
  header = ["rate mu", "clients", "p/client", "p class", "util", "E[X]", "sojourn", "E[D]",
            "naive E[D]"]  # fmt: skip
  rows = []
  for rate in np.unique(rates):
    sel = rates == rate
    mean = lambda key, sel=sel: float(np.mean(prof[key][sel]))  # noqa: E731
    rows.append([
      f"{rate:.4g}", str(int(sel.sum())), f"{mean('routing'):.4f}",
      f"{float(np.sum(prof['routing'][sel])):.4f}", f"{mean('utilisation'):.3f}",
      f"{mean('mean_queue_length'):.3f}", f"{mean('mean_sojourn_time'):.4g}",
      f"{mean('mean_delay'):.3f}", f"{mean('naive_delay'):.3f}",
    ])  # fmt: skip
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
  line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
  return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])

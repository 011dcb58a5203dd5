"""Routing in asynchronous FL (closed queueing network): uniform vs optimised, on digits.

n = 20 clients in 5 speed classes (service rates mu = 1, 2, 4, 8, 16; 4 clients each;
exponential service), C = 20 tasks in circulation, Generalized AsyncSGD (every completion
is one server update, weighted 1 / (n p_I)), 2 local steps per task, digits split by
Dirichlet 0.5, 3 seeds. Three routings p (the argument):

  uniform     plain AsyncSGD, p_i = 1 / n
  per_update  p minimising the per-update bound G(p, C) for K updates
  wall_clock  p minimising the same bound with K = lambda(p, C) t (updates available in t)

optimised by `fedqs_jax.queueing.optimize_routing` when the config is loaded (a second).
Every variant gets the same simulated time budget T: its number of rounds is
lambda(p, C) T from the closed form, so the final accuracies compare accuracy per unit
of time.

  for r in uniform per_update wall_clock; do
    python -m experiments.main --config=experiments/configs/queueing_digits.py:$r \
        --workdir=runs/queueing/$r
  done
  Q=runs/queueing; python -m experiments.plot --compare=$Q/uniform,$Q/per_update,$Q/wall_clock \
      --out=$Q/accuracy_vs_time.png

Observed on 2 CPU cores (about a minute per variant), mean +- std over 3 seeds at the
same simulated time T = 150 (closed-form throughput lambda; simulated time to 80%):

  routing     p of the 5 classes (slow..fast)   lambda  rounds  final acc       time to 80%
  uniform     0.20 0.20 0.20 0.20 0.20          16.7    2500    95.02 +- 0.32    8
  per_update  0.44 0.16 0.14 0.14 0.13           7.9    1200    93.83 +- 0.16   17
  wall_clock  0.11 0.26 0.26 0.20 0.18          23.3    3250    95.42 +- 0.15    5

The paper's qualitative finding reproduces: optimising the per-update bound parks tasks
at the slow clients (less staleness: the best curve per round), which halves the
throughput and makes it the worst per unit of time; the wall-clock objective raises the
throughput and is the best per unit of time. Digits is easy, so the final gaps are small
(the paper reports +10 to 30% on harder tasks); the time to 80% shows the effect.
"""

import numpy as np

from experiments.configs import default

RATES = np.repeat([1.0, 2.0, 4.0, 8.0, 16.0], 4)  # mu_i, 5 speed classes
CONCURRENCY = 20
TIME_BUDGET = 150.0  # simulated time of every variant
EVAL_EVERY = 50
# Bound constants (spec/QUEUEING.md): a large initial gap A makes updates per unit of time
# matter, as early in training.
INITIAL_GAP = 300.0


def routing(arg: str) -> tuple[np.ndarray, float]:
  """(p, lambda(p, C)) of a variant."""
  from fedqs_jax import queueing

  uniform = np.full(RATES.shape, 1.0 / RATES.size)
  constants = queueing.BoundConstants(A=INITIAL_GAP)
  if arg == "uniform":
    p = uniform
  else:
    updates = float(queueing.throughput(uniform, RATES, CONCURRENCY)) * TIME_BUDGET
    horizon = updates if arg == "per_update" else TIME_BUDGET
    result = queueing.optimize_routing(RATES, CONCURRENCY, arg, constants, horizon=horizon)
    p = np.asarray(result.p, np.float64)
    p = p / p.sum()
  return p, float(queueing.throughput(p, RATES, CONCURRENCY))


def get_config(arg: str = "uniform"):
  if arg not in ("uniform", "per_update", "wall_clock"):
    raise ValueError(f"queueing_digits.py takes uniform, per_update or wall_clock, got {arg!r}")
  p, throughput = routing(arg)
  config = default.get_config()
  config.algorithms = "gen_async_sgd"
  config.num_seeds = 3
  config.target_accuracy = 0.8
  config.data.num_clients = RATES.size
  config.data.dirichlet_alpha = 0.5
  config.schedule.protocol = "queueing"
  config.schedule.buffer_size = 1
  config.schedule.concurrency = CONCURRENCY
  config.schedule.routing = tuple(float(v) for v in p)
  rounds = int(round(throughput * TIME_BUDGET / EVAL_EVERY)) * EVAL_EVERY
  config.schedule.num_rounds = max(rounds, EVAL_EVERY)
  config.time.distribution = "exponential"
  config.time.latencies = tuple(float(v) for v in 1.0 / RATES)  # mean service times
  config.local.steps = 2
  config.local.batch_size = 16
  config.local.lr = 0.05
  config.engine.eval_every = EVAL_EVERY
  return config

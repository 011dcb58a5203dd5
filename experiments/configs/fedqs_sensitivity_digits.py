"""Sensitivity of FedQS-Avg to a, m0 and k (the paper's sensitivity analysis), one program.

The setting of `fedqs_digits.py` (digits, N = 100, Dirichlet 0.1, 1:50 latencies, K = 10),
200 rounds. The grid: a (learning-rate step) x m0 (base momentum) x k (momentum gain)
= 4 x 4 x 3 = 48 points, x 2 seeds = 96 entries of ONE compiled program (the leading grid
axis of the training scan; the schedule is shared by the points of a seed). Checkpointed
every 5 chunks, so a killed run continues with `--resume`.

  python -m experiments.main --config=experiments/configs/fedqs_sensitivity_digits.py \
      --workdir=runs/sensitivity
  python -m experiments.plot --workdir=runs/sensitivity

The plots: `sensitivity_fedqs_avg_<x>_<y>.png` for each pair of (a, m0, k), final accuracy
averaged over seeds and the third hyperparameter.
"""

from experiments.configs import fedqs_digits
from fedqs_jax import sweep


def get_config():
  config = fedqs_digits.get_config()
  config.algorithms = "fedqs_avg"
  config.num_seeds = 2
  config.schedule.num_rounds = 200
  config.engine.eval_every = 10
  config.engine.checkpoint_every = 5
  return config


def get_sweep():
  return sweep.product(
    sweep.axis("fedqs.a", [0.0005, 0.001, 0.002, 0.005]),
    sweep.axis("fedqs.m0", [0.0, 0.1, 0.2, 0.3]),
    sweep.axis("fedqs.k", [1.0, 2.0, 4.0]),
  )

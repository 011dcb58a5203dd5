"""FedQS vs its baselines on real digits (the paper's main comparison, CPU-sized).

FedAvg, FedQS-Avg, FedSGD, FedQS-SGD, FedBuff and FedAsync on ONE shared semi-asynchronous
schedule: scikit-learn's digits, N = 100 clients, HeteroDiri Dirichlet 0.1, latencies
drawn from 1..50 (speed ratio 1:50), K = 10, 400 rounds, the reference's local training
(2 epochs, batch 50, lr 0.1, clip 20, no momentum), 20% of each client's data held out
for FedQS's SBC check (for every method, so all train on the same data), 3 seeds.

  python -m experiments.main --config=experiments/configs/fedqs_digits.py --workdir=runs/fedqs

The reference time model instead: add `--config.schedule.protocol=tick
--config.time.latency_file=../shared/data/fedqs_resources/resources_No_100_max_50.csv`.

Observed on 2 CPU cores (1-2 minutes). Final accuracy (mean of the last 10 evaluations),
mean +- std over 3 seeds; rounds to 80% over the seeds that reached it; oscillation = std of
the accuracy over the last 20% of evaluations, in points:

  fedavg     69.05 +- 2.59   never                 3.47
  fedqs_avg  75.20 +- 2.22   350 (2 of 3 seeds)    4.30
  fedsgd     90.90 +- 0.26    77                   0.59
  fedqs_sgd  90.97 +- 0.37    77                   0.61
  fedbuff    87.75 +- 0.25   140                   0.35
  fedasync   80.33 +- 0.76   327                   1.82
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.algorithms = "fedavg,fedqs_avg,fedsgd,fedqs_sgd,fedbuff,fedasync"
  config.num_seeds = 3
  config.target_accuracy = 0.8
  config.data.validation_fraction = 0.2
  config.schedule.num_rounds = 400
  config.local.batch_size = 50
  config.local.epochs = 2
  config.local.lr = 0.1
  config.local.clip = 20.0
  return config

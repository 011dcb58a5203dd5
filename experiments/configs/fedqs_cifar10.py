"""FedQS's CV task: CIFAR-10, ResNet-18, HeteroDiri Dirichlet x, the paper's main-table methods.

FedAvg, FedQS-Avg, FedSGD, FedQS-SGD (+ FedBuff, FedAsync) on ONE shared
semi-asynchronous schedule with the FedQS reference settings (`conf_unbias.json`):
N = 100 clients, Dirichlet x = 0.5 (the paper's table also has x = 0.1 and 1),
latencies drawn from 1..50 (1:50), K = 10, 400 rounds, 2 local epochs, batch 50,
lr 0.1, clip 20, no local momentum, 20% of each client's data held out for FedQS's
SBC check (for every method), 3 seeds. ResNet-18 in its CIFAR form with the
reference's BatchNorm (running statistics trained locally and averaged like parameters;
`--config.model.norm=group` for GroupNorm).

CIFAR-10 comes from TensorFlow Datasets and must be prepared once (see
`fedqs_jax/data/tfds_images.py`; needs `pip install -e ".[tfds]"`):

  python -c "import tensorflow_datasets as tfds; tfds.builder('cifar10', \
      data_dir='DIR', file_format='array_record').download_and_prepare()"
  python -m experiments.main --config=experiments/configs/fedqs_cifar10.py \
      --config.data.data_dir=DIR --config.data.dirichlet_alpha=0.1 --workdir=runs/cifar10_x0.1

Paper (accuracy %, x = 0.1 / 0.5 / 1): FedAvg 56.05 / 73.71 / 77.86, FedQS-Avg
63.91 / 80.26 / 82.74, FedSGD 65.71 / 83.87 / 85.42, FedQS-SGD 68.88 / 86.11 / 86.79.
A full run is accelerator work (100 clients x 2 epochs of ResNet-18 per round); not
run here.

`--config=experiments/configs/fedqs_cifar10.py:smoke` is a CPU-sized variant with the
same pipeline: 20 clients, 2,000 training and 500 test images, a width-8 ResNet-18,
K = 4, 20 rounds, 1 epoch, 1 seed (it still needs the prepared data).
"""

import ml_collections

from experiments.configs import fedqs_digits


def get_config(arg: str = "paper") -> ml_collections.ConfigDict:
  """arg: "paper" (default) or "smoke"."""
  if arg not in ("paper", "smoke", ""):
    raise ValueError(f"fedqs_cifar10.py takes 'paper' or 'smoke', got {arg!r}")
  # fedqs_digits: the reference's methods, 3 seeds, K = 10, 1:50, 400 rounds, local training.
  config = fedqs_digits.get_config()
  config.target_accuracy = 0.7

  config.data.name = "cifar10"
  config.data.data_dir = ""  # TFDS data folder ("": TFDS's default)
  config.data.num_clients = 100
  config.data.partition = "dirichlet"
  config.data.dirichlet_alpha = 0.5
  config.data.max_train_examples = 0
  config.data.max_test_examples = 0

  config.model.name = "resnet18"
  config.model.width = 64
  config.model.norm = "batch"
  config.model.groups = 2  # GroupNorm only

  if arg == "smoke":
    config.algorithms = "fedavg,fedqs_avg,fedsgd,fedqs_sgd"
    config.num_seeds = 1
    config.target_accuracy = 0.3
    config.data.num_clients = 20
    config.data.max_train_examples = 2000
    config.data.max_test_examples = 500
    config.model.width = 8
    config.schedule.num_rounds = 20
    config.schedule.buffer_size = 4
    config.time.speed_ratio = 10
    config.local.batch_size = 32
    config.local.epochs = 1
    config.engine.eval_every = 5
  return config

"""FedSQ on digits: fine-tuning from a model pretrained on real MNIST, IID and non-IID.

The warm start is the default MLP pretrained centrally on mnist8 (5,000 real MNIST digits
in the 8x8 digits format, `pretrain_mnist8.py`); every method starts from it: FedAvg,
FedProx, FedSQ+FedAvg and FedSQ+FedQS-SGD (FedSQ as a model transform: the variants
switch `model.fedsq` on). The target task is scikit-learn's digits, N = 100 clients under
IID, Dirichlet 0.1 and Dirichlet 0.5 splits (a static sweep: three groups), semi-
asynchronous K = 10 with exponential service times around latencies 1..50, the
fedqs_digits local training with batches of 10, 3 seeds, one shared schedule per seed. Best validation accuracy (BVA) is the best test accuracy over
the evaluations (every 5 rounds), `rounds_to_best` its round (summary.csv).

  python -m experiments.pretrain --workdir=runs/pretrain_mnist8
  python -m experiments.main --config=experiments/configs/fedsq_digits.py --workdir=runs/fedsq

(`--config.model.init_checkpoint=DIR` for a checkpoint elsewhere.) The FedSQ table (BVA,
rounds to BVA, final accuracy per split and method, mean +- std over seeds):

  python -m experiments.fedsq_table --workdir=runs/fedsq
"""

from experiments.configs import fedqs_digits
from fedqs_jax import sweep

METHODS = ("fedavg", "fedprox", "fedsq_fedavg", "fedsq_fedqs_sgd")


def get_config():
  config = fedqs_digits.get_config()
  config.algorithms = ",".join(METHODS)
  config.variants = {
    "fedsq_fedavg": {"base": "fedavg", "model": {"fedsq": True}},
    "fedsq_fedqs_sgd": {"base": "fedqs_sgd", "model": {"fedsq": True}},
  }
  config.model.init_checkpoint = "runs/pretrain_mnist8"
  # Every seed starts from the same weights: the seeds differ by their schedules (random
  # service times around each client's latency) and minibatch orders (most digits clients
  # hold fewer than 50 examples, so batches of 50 would be one full batch per epoch).
  config.time.distribution = "exponential"
  config.local.batch_size = 10
  config.schedule.num_rounds = 150
  config.engine.eval_every = 5
  config.target_accuracy = 0.85
  return config


def get_sweep():
  return sweep.zip(
    sweep.axis("data.partition", ["iid", "dirichlet", "dirichlet"]),
    sweep.axis("data.dirichlet_alpha", [0.5, 0.1, 0.5]),
  )

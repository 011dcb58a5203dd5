"""FedSQ on digits: fine-tuning from a model pretrained on real MNIST, IID and non-IID.

The warm start is the default MLP pretrained centrally on mnist8 (5,000 real MNIST digits
in the 8x8 digits format, `pretrain_mnist8.py`); every method starts from it: FedAvg,
FedProx, FedSQ+FedAvg and FedSQ+FedQS-SGD (FedSQ as a model transform: the variants
switch `model.fedsq` on). The target task is scikit-learn's digits, N = 100 clients under
IID, Dirichlet 0.1 and Dirichlet 0.5 splits (a static sweep: three groups), semi-
asynchronous K = 10 with exponential service times around latencies 1..50, the
fedqs_digits local training with batches of 10, 3 seeds, one shared schedule per seed.
Best validation accuracy (BVA) is the best test accuracy over the evaluations (every 5
rounds), `rounds_to_best` its round (summary.csv).

  python -m experiments.pretrain --workdir=runs/pretrain_mnist8
  python -m experiments.main --config=experiments/configs/fedsq_digits.py --workdir=runs/fedsq

(`--config.model.init_checkpoint=DIR` for a checkpoint elsewhere.) The FedSQ table (BVA,
rounds to BVA, final accuracy per split and method, mean +- std over seeds):

  python -m experiments.fedsq_table --workdir=runs/fedsq

Observed on 2 CPU cores (5.5 min at load ~6; pretraining: 93.2% on held-out MNIST):

  split           method                        BVA     rounds to BVA       final acc
  iid             fedavg              93.22 +- 0.35      140.0 +- 8.2   91.85 +- 0.15
  iid             fedprox             93.13 +- 0.26      140.0 +- 8.2   91.84 +- 0.15
  iid             fedsq_fedavg        93.31 +- 0.39      145.0 +- 0.0   91.89 +- 0.10
  iid             fedsq_fedqs_sgd     96.19 +- 0.13     136.7 +- 11.8   95.44 +- 0.36
  dirichlet 0.1   fedavg              90.53 +- 0.68      126.7 +- 8.5   89.65 +- 0.61
  dirichlet 0.1   fedprox             90.53 +- 0.68      126.7 +- 8.5   89.63 +- 0.60
  dirichlet 0.1   fedsq_fedavg        90.81 +- 0.39     133.3 +- 13.1   89.55 +- 0.58
  dirichlet 0.1   fedsq_fedqs_sgd     96.75 +- 0.26      138.3 +- 2.4   95.77 +- 0.18
  dirichlet 0.5   fedavg              92.11 +- 0.47      140.0 +- 4.1   90.76 +- 0.30
  dirichlet 0.5   fedprox             92.11 +- 0.47      140.0 +- 4.1   90.75 +- 0.30
  dirichlet 0.5   fedsq_fedavg        91.92 +- 0.45     133.3 +- 10.3   90.55 +- 0.33
  dirichlet 0.5   fedsq_fedqs_sgd     96.01 +- 0.26     103.3 +- 20.1   95.42 +- 0.40

FedSQ's claim (under Dirichlet splits, BVA in fewer rounds than FedAvg/FedProx from the same
warm start, no loss under IID) does not reproduce here: FedSQ+FedAvg's BVA is within one std
of FedAvg's in every split and its rounds to BVA are not fewer (Dirichlet 0.1: 133 vs 127;
0.5: 133 vs 140, within the spread). Every method is still improving at round 150, so rounds
to BVA mostly measures where the curve flattens. FedSQ+FedQS-SGD is best everywhere, but it
differs from the others in its aggregation too (update aggregation with FedQS's Mods).
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

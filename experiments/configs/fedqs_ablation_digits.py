"""FedQS ablations on digits: feedback, momentum and the similarity function.

Each variant is FedQS-Avg or FedQS-SGD with one switch changed, all on ONE shared
schedule (the setting of `fedqs_digits.py`: digits, N = 100, Dirichlet 0.1, 1:50, K = 10,
400 rounds, 3 seeds).

  python -m experiments.main --config=experiments/configs/fedqs_ablation_digits.py \
      --workdir=runs/fedqs_ablation

Observed on 2 CPU cores (about 3 minutes), final accuracy mean +- std over 3 seeds:

  variant         FedQS-Avg       FedQS-SGD
  full            75.20 +- 2.22   90.97 +- 0.37
  nofeedback      74.44 +- 1.93   91.48 +- 0.28
  nomomentum      71.74 +- 2.24   90.76 +- 0.25
  layerwise       75.83 +- 1.80   91.15 +- 0.35
  euclidean       76.23 +- 1.62   91.54 +- 0.20

Momentum matters for FedQS-Avg (-3.5 points without it); the paper's large feedback effect
(-6 to -8 points) does not reproduce here (-0.8); the similarity choice matters little.
"""

import ml_collections

from experiments.configs import fedqs_digits

ABLATIONS = {
  "nofeedback": {"feedback": False},
  "nomomentum": {"momentum": False},
  "layerwise": {"similarity": "cosine_layerwise_minmax"},
  "euclidean": {"similarity": "euclidean"},
}


def get_config():
  config = fedqs_digits.get_config()
  names, variants = [], {}
  for base in ("fedqs_avg", "fedqs_sgd"):
    names.append(base)
    for suffix, fields in ABLATIONS.items():
      names.append(f"{base}_{suffix}")
      variants[f"{base}_{suffix}"] = {"base": base, "fedqs": fields}
  config.algorithms = ",".join(names)
  config.variants = ml_collections.ConfigDict(variants)
  return config

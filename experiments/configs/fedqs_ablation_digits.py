"""FedQS ablations on digits: feedback, momentum and the similarity function.

Each variant is FedQS-Avg or FedQS-SGD with one switch changed, all on ONE shared
schedule (the setting of `fedqs_digits.py`: digits, N = 100, Dirichlet 0.1, 1:50, K = 10,
400 rounds, 3 seeds).

  python -m experiments.main --config=experiments/configs/fedqs_ablation_digits.py \
      --workdir=runs/fedqs_ablation

Observed (2 CPU cores, about 6 minutes): see the FedQS issue's closing note.
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

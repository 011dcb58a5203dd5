"""Pretraining for the Shakespeare target: the `:cpu` LSTM on the "source" half of the plays.

The plays split into two fixed, disjoint halves (`data.plays`, see
`fedqs_jax.data.shakespeare`): 19 "source" plays and 18 "target" plays. This config
trains the model of `fedqs_shakespeare.py:cpu` (Embed(80, 8) -> 2 x LSTM(32) ->
Dense(64 -> 80), 20-character windows, at most 150 windows per role) centrally on every
eligible role of the source plays: `data.roles = 0` (all roles) dealt to one client, so
`data.x_train` holds all of them, and no validation holdout. The checkpoint is the warm
start for federated fine-tuning on the roles of the target plays (`fedqs_shakespeare.py`'s
docstring):

  python -m experiments.pretrain --config=experiments/configs/pretrain_shakespeare.py \
      --workdir=runs/pretrain_shakespeare

Training: 30 epochs of SGD (batch 64, lr 0.8 = the `:cpu` local lr, no momentum) over the
76,486 training windows (<= 150 per role) of the 551 eligible roles (of 557) of the 19
source plays; test set: 2,000 windows of those roles' held-out lines.

Observed on 2 shared CPU cores (other jobs running): 1 min 46 s wall (94 s of training,
about 3 s per epoch after compilation). Test accuracy (source plays) after 1 / 5 / 10 / 20 /
30 epochs: 35.25 / 43.40 / 45.65 / 47.65 / 47.75%, train loss 2.51 -> 1.67. The
checkpoint predicts the `:cpu` test windows of the 40 sampled roles (seed 0) of the
TARGET plays with 44.45% accuracy before any fine-tuning (46.55% on the source
plays' `:cpu` sample): the text transfers across plays.
"""

import ml_collections

from experiments.configs import fedqs_shakespeare


def get_config():
  config = fedqs_shakespeare.get_config("cpu")  # its data sizes and model
  config.data.plays = "source"
  config.data.num_clients = 1
  config.data.roles = 0  # every eligible role of the source plays
  config.data.validation_fraction = 0.0
  config.pretrain = ml_collections.ConfigDict(
    dict(epochs=30, batch_size=64, lr=fedqs_shakespeare.LR_CPU, momentum=0.0)
  )
  return config

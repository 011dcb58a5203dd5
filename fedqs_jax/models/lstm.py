"""The paper's next-character LSTM for Shakespeare (LEAF).

FedQS's NLP model, as in its reference code (`MyLSTM` in `resnet_model.py`):

  Embed(80, 8) -> LSTM(128) -> LSTM(128) -> concat(h_1, h_2) -> Dense(256 -> 80)

The input is a [B, T] int32 window of character indices (T = 80 in LEAF), the
output [B, 80] logits of the next character. The Linear(256 -> 80) of the paper
reads the concatenation of the FINAL hidden states of the two stacked layers
(PyTorch's `h_n` of a 2-layer `nn.LSTM`, [layers, B, 128] -> [B, 256], layer 1
first); it is not bidirectional and does not use the per-step outputs.

Parameters: embedding 80 * 8 = 640; layer 1 4 * 128 * (8 + 128) + 4 * 128 =
70,144; layer 2 4 * 128 * (128 + 128) + 4 * 128 = 131,584; head 256 * 80 + 80 =
20,560; 222,928 in all. PyTorch's `nn.LSTM` keeps two bias vectors per layer
(b_ih and b_hh, whose sum is the effective bias), so the reference reports
222,928 + 2 * 512 = 223,952 for the same function class.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class CharLSTM(nn.Module):
  """Embedding -> stacked LSTMs -> Dense on the concatenated last hidden states.

  Attributes:
    num_classes: output size, the vocabulary size (80 for LEAF Shakespeare).
    vocab_size: embedding rows; None = `num_classes`.
    embed_dim: embedding width (8).
    hidden: LSTM width (128).
    layers: number of stacked LSTM layers (2).
  """

  num_classes: int
  vocab_size: int | None = None
  embed_dim: int = 8
  hidden: int = 128
  layers: int = 2

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    vocab = self.vocab_size or self.num_classes
    h = nn.Embed(vocab, self.embed_dim, name="embed")(x.astype(jnp.int32))  # [B, T, E]
    finals = []
    for layer in range(self.layers):
      cell = nn.OptimizedLSTMCell(self.hidden, name=f"lstm{layer + 1}")
      (_, h_last), h = nn.RNN(cell, return_carry=True)(h)  # carry (c, h); h [B, T, H]
      finals.append(h_last)
    return nn.Dense(self.num_classes, name="head")(jnp.concatenate(finals, axis=-1))

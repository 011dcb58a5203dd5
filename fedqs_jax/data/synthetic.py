"""LEAF Synthetic(alpha, beta), the FedProx synthetic benchmark.

Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020),
Sec. 5.1, following the authors' `generate_synthetic.py`. With d = 60 features
and C = 10 classes, for each client k:

  u_k ~ N(0, alpha),  B_k ~ N(0, beta)                  (model / data heterogeneity)
  W_k [d, C] ~ N(u_k, 1) entrywise,  b_k [C] ~ N(u_k, 1)
  v_k [d] ~ N(B_k, 1) entrywise
  x ~ N(v_k, Sigma),  Sigma = diag(j^-1.2), j = 1..d
  y = argmax(softmax(W_k^T x + b_k)) = argmax(W_k^T x + b_k)

As in the reference code, `alpha` and `beta` are the standard deviations
(`np.random.normal`'s scale); for Synthetic(1, 1) variance and std coincide.

Client sizes follow the reference's power law, n_k = floor(LogNormal(4, 2)) + 50,
then capped at `max_examples_per_client` (default 500) to keep the total
reasonable (the uncapped tail reaches tens of thousands). Each client's first
n_k - floor(test_fraction * n_k) examples are its training set; the remaining
floor(test_fraction * n_k) go into the common test set held by the server, so
every client keeps at least one training example.

Randomness: one NumPy generator seeded by `seed`, drawn in this order:
sizes [N], u [N], B [N], then per client v_k, W_k, b_k, x.
"""

from __future__ import annotations

import numpy as np

from fedqs_jax.data import partition as partition_lib
from fedqs_jax.data.base import FederatedData
from fedqs_jax.errors import check

DIM = 60
NUM_CLASSES = 10


def load_synthetic(
  num_clients: int,
  alpha: float = 1.0,
  beta: float = 1.0,
  test_fraction: float = 0.2,
  seed: int = 0,
  max_examples_per_client: int = 500,
) -> FederatedData:
  """Generates Synthetic(alpha, beta) with one client per generated device.

  Args:
    num_clients: N >= 1.
    alpha: std of the per-client model means u_k (model heterogeneity), >= 0.
    beta: std of the per-client feature means B_k (data heterogeneity), >= 0.
    test_fraction: share of each client's examples moved to the test set, in (0, 1).
    seed: integer seed of the NumPy generator.
    max_examples_per_client: cap on n_k (train + test), >= 1.

  Returns:
    `FederatedData` with x_train [n_train, 60], x_test [n_test, 60] float32,
    int32 labels in [0, 10), num_classes 10. Client k owns the contiguous rows
    of its training examples in `x_train`, in client order.
  """
  check(num_clients >= 1, "num_clients", num_clients, "must be >= 1")
  check(alpha >= 0, "synthetic_alpha", alpha, "must be >= 0")
  check(beta >= 0, "synthetic_beta", beta, "must be >= 0")
  check(0.0 < test_fraction < 1.0, "test_fraction", test_fraction, "must be in (0, 1)")
  check(
    max_examples_per_client >= 1,
    "max_examples_per_client",
    max_examples_per_client,
    "must be >= 1",
  )
  rng = np.random.default_rng(seed)
  sizes = rng.lognormal(4.0, 2.0, num_clients).astype(np.int64) + 50
  sizes = np.minimum(sizes, max_examples_per_client)
  u = rng.normal(0.0, alpha, num_clients)
  b_mean = rng.normal(0.0, beta, num_clients)
  x_std = np.arange(1, DIM + 1, dtype=np.float64) ** (-1.2 / 2)  # sqrt(Sigma_jj)

  x_train, y_train, x_test, y_test, parts = [], [], [], [], []
  offset = 0
  for k in range(num_clients):
    v = rng.normal(b_mean[k], 1.0, DIM)
    w = rng.normal(u[k], 1.0, (DIM, NUM_CLASSES))
    b = rng.normal(u[k], 1.0, NUM_CLASSES)
    x = v + x_std * rng.standard_normal((sizes[k], DIM))
    y = np.argmax(x @ w + b, axis=1)
    n_train = sizes[k] - int(test_fraction * sizes[k])
    x_train.append(x[:n_train])
    y_train.append(y[:n_train])
    x_test.append(x[n_train:])
    y_test.append(y[n_train:])
    parts.append(np.arange(offset, offset + n_train))
    offset += n_train
  return partition_lib.pack(
    np.concatenate(x_train),
    np.concatenate(y_train),
    parts,
    np.concatenate(x_test),
    np.concatenate(y_test),
    num_classes=NUM_CLASSES,
  )

"""FedQS-SGD and FedQS-Avg (Li, Gui, Deng, Meng, Wu, NeurIPS 2025; spec/FEDQS.md).

Mod 1, global aggregation estimation (client side, at dispatch). The client
receives w^v and estimates the last server step, the pseudo-global gradient
L_g = w^v - w^(v-1), and measures its dissimilarity theta_i to its own previous
local update Delta_i^prev (`similarity.dissimilarity`; larger = less aligned).

Mod 2, four client types (client side). With the update frequency
f_i = freq_i / mean_j freq_j and the thresholds f_bar (mean of the f_j > 0) and
theta_bar (mean of the latest theta_j > 0) broadcast by the server,
F = min(f_bar / f_i, F_max) and G = theta_i / theta_bar:

  type  condition                          lr          momentum                   feedback
  FBC   f_i > f_bar,  theta_i > theta_bar  unchanged   0                          1
  FUC   f_i > f_bar,  theta_i <= theta_bar eta - a F   m0 + min(k (1/G - 1), m_cap) 0
  SUC   f_i <= f_bar, theta_i <= theta_bar eta + a F   m0 + min(k (1/G - 1), m_cap) 0
  SBC   f_i <= f_bar, theta_i > theta_bar  eta + a F   straggler m0 / shift 0      0 / 1

eta is clipped to [lr_min, lr_max] after every classification and persists per
client. The SBC check evaluates w^v on the client's validation data per class:
spread = max - min class accuracy (percentage points; a class with fewer than
10 samples has its accuracy halved); spread < spread_threshold -> straggler,
else distribution shift. A client with no previous update, f_i = 0, or before
f_bar and theta_bar exist trains with its stored lr and momentum, no feedback.
G = 0 (theta_i = 0) gives the momentum cap m0 + m_cap.

Mod 3, aggregation with feedback (server side), for the K arrivals S:

  freq_j += 1 for j in S
  p_i = n_i / sum_{j in S} n_j          (or 1/K with base_weights="uniform")
  if feedback_i: p_i *= (e/2)^(phi - F3_i) (1 + min(G_i, G_max)^2),  F3_i = freq_i / sum freq
  p = p / sum p
  FedQS-SGD:  w <- w + server_lr sum_i p_i Delta_i
  FedQS-Avg:  w <- sum_i p_i (w^(v_i) + Delta_i)

`feedback_weight="paper"` uses exp(phi - F3)/(2 phi - F3) (1 + G)/(2K) instead
(negative if a client's share F3 exceeds 2 phi). The feedback bit, theta_i and
G_i travel with the upload. No explicit staleness discount.

Ablations (static switches): `similarity`, `momentum` (off: m_i = 0),
`feedback` (off: data-size weights only), `base_weights`, and `adaptive_lr`
(off: eta_i stays the local lr). With momentum, feedback and adaptive_lr off
and data-size weights, FedQS-SGD is FedSGD and FedQS-Avg is FedAvg.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedqs_jax.algorithms import base, similarity
from fedqs_jax.errors import check

VARIANTS = ("sgd", "avg")
BASE_WEIGHTS = ("data_size", "uniform")
FEEDBACK_WEIGHTS = ("reference", "paper")
TYPES = ("fbc", "fuc", "suc", "sbc")

# Dynamic hyperparameters with the reference code's defaults and their ranges.
HPARAMS = {
  "a": (0.002, base.NON_NEGATIVE),  # learning-rate step
  "m0": (0.1, base.NON_NEGATIVE),  # base momentum
  "k": (2.0, base.NON_NEGATIVE),  # momentum slope
  "m_cap": (0.4, base.NON_NEGATIVE),  # momentum increment cap
  "phi": (0.1, base.NON_NEGATIVE),  # feedback exponent offset
  "f_max": (9.0, base.POSITIVE),  # cap of F = f_bar / f_i
  "g_max": (2.0, base.POSITIVE),  # cap of G in the feedback boost
  "lr_min": (1e-3, base.POSITIVE),
  "lr_max": (0.2, base.POSITIVE),
  # percentage points: straggler below, distribution shift above
  "spread_threshold": (30.0, base.NON_NEGATIVE),
  "server_lr": (1.0, base.POSITIVE),  # eta_g of FedQS-SGD
}
DEFAULT_HPARAMS = {name: default for name, (default, _) in HPARAMS.items()}

# Static switches (ablations) and their allowed values (None: a bool).
OPTIONS = {
  "similarity": ("cosine", similarity.SIMILARITIES),
  "momentum": (True, None),  # Mod 2 momentum adaptation (off: m_i = 0)
  "feedback": (True, None),  # Mod 3 feedback boost (off: base weights only)
  "adaptive_lr": (True, None),  # Mod 2 learning-rate steps (off: eta_i = local.lr)
  "base_weights": ("data_size", BASE_WEIGHTS),
  "feedback_weight": ("reference", FEEDBACK_WEIGHTS),
}


class FedQSClientState(NamedTuple):
  prev_update: base.Params  # [N, *params] Delta_i^prev, the client's last local update
  has_prev: jnp.ndarray  # [N] bool
  lr: jnp.ndarray  # [N] float32 persistent local learning rate eta_i
  momentum: jnp.ndarray  # [N] float32 last momentum m_i
  theta: jnp.ndarray  # [N] float32 theta_i of the client's current task
  g: jnp.ndarray  # [N] float32 G_i of the client's current task
  feedback: jnp.ndarray  # [N] bool feedback bit of the client's current task


class FedQSServerState(NamedTuple):
  freq: jnp.ndarray  # [N] float32 updates aggregated per client
  theta: jnp.ndarray  # [N] float32 latest theta_j reported by each client (0: none)
  f_bar: jnp.ndarray  # [] mean of f_j > 0 (0: undefined)
  theta_bar: jnp.ndarray  # [] mean of theta_j > 0 (0: undefined)
  optimizer: object  # FedQS-SGD's server optimizer state (() for FedQS-Avg)


def _masked_mean(x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def pseudo_global_gradient(params: base.Params, prev_params: base.Params) -> base.Params:
  """Mod 1: L_g = w^v - w^(v-1), the client's estimate of the last server step."""
  return jax.tree.map(jnp.subtract, params, prev_params)


def relative_frequency(freq: jnp.ndarray) -> jnp.ndarray:
  """f_j = freq_j / mean(freq), 0 where freq_j = 0 ([N] -> [N])."""
  mean = jnp.mean(freq)
  return jnp.where((freq > 0) & (mean > 0), freq / jnp.maximum(mean, 1e-12), 0.0)


def thresholds(freq: jnp.ndarray, theta: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(f_bar, theta_bar): means of the positive f_j and theta_j (0 when none is positive)."""
  f = relative_frequency(freq)
  return _masked_mean(f, f > 0), _masked_mean(theta, theta > 0)


def class_spread(accuracy: jnp.ndarray, counts: jnp.ndarray) -> jnp.ndarray:
  """max - min per-class accuracy in percentage points over the classes present.

  A class with fewer than 10 validation samples has its accuracy halved (the
  reference code). No validation data: spread 0 (treated as a straggler).
  """
  pct = 100.0 * accuracy * jnp.where(counts < 10, 0.5, 1.0)
  present = counts > 0
  hi = jnp.max(jnp.where(present, pct, -jnp.inf))
  lo = jnp.min(jnp.where(present, pct, jnp.inf))
  return jnp.where(jnp.any(present), hi - lo, 0.0)


class Classification(NamedTuple):
  """Mod 2 decision for one client (all scalars)."""

  classified: jnp.ndarray  # bool: the client had what it needs to classify itself
  kind: jnp.ndarray  # int32 index into TYPES (meaningful when classified)
  straggler: jnp.ndarray  # bool: SBC with a small class spread
  lr: jnp.ndarray
  momentum: jnp.ndarray
  feedback: jnp.ndarray  # bool
  g: jnp.ndarray  # theta_i / theta_bar (0 when undefined)


def classify(
  *,
  theta,
  f,
  f_bar,
  theta_bar,
  has_prev,
  lr,
  momentum,
  spread,
  hparams,
  use_momentum: bool = True,
  adaptive_lr: bool = True,
) -> Classification:
  """Mod 2 for one client: its type, next learning rate, momentum and feedback bit.

  Args:
    theta: theta_i, the client's dissimilarity (Mod 1).
    f: f_i, its relative update frequency.
    f_bar, theta_bar: the server's thresholds (0 = undefined yet).
    has_prev: whether the client has a previous local update.
    lr, momentum: its stored learning rate and momentum.
    spread: per-class accuracy spread of w^v on its validation data (SBC check).
    hparams: the dynamic FedQS hyperparameters (`DEFAULT_HPARAMS` keys).
  """
  h = hparams
  classified = has_prev & (f > 0) & (f_bar > 0) & (theta_bar > 0)
  fast = f > f_bar
  biased = theta > theta_bar
  big_f = jnp.minimum(f_bar / jnp.maximum(f, 1e-12), h["f_max"])
  g = jnp.where(theta_bar > 0, theta / jnp.maximum(theta_bar, 1e-12), 0.0)
  kind = jnp.where(fast, jnp.where(biased, 0, 1), jnp.where(biased, 3, 2)).astype(jnp.int32)
  straggler = (kind == 3) & (spread < h["spread_threshold"])

  step = h["a"] * big_f
  new_lr = jnp.select([kind == 0, kind == 1], [lr, lr - step], lr + step)
  new_lr = jnp.clip(new_lr, h["lr_min"], h["lr_max"]) if adaptive_lr else lr
  # G = 0 (theta_i = 0): 1/G - 1 is +inf and the increment is capped at m_cap.
  inv_g = jnp.where(g > 0, 1.0 / jnp.maximum(g, 1e-12), jnp.inf)
  aligned_m = h["m0"] + jnp.minimum(h["k"] * (inv_g - 1.0), h["m_cap"])
  new_m = jnp.select(
    [kind == 0, kind == 3],
    [jnp.zeros_like(aligned_m), jnp.where(straggler, h["m0"], 0.0)],
    aligned_m,
  )
  feedback = (kind == 0) | ((kind == 3) & ~straggler)

  lr = jnp.where(classified, new_lr, lr)
  momentum = jnp.where(classified, new_m, momentum) if use_momentum else jnp.zeros_like(lr)
  return Classification(
    classified=classified,
    kind=kind,
    straggler=classified & straggler,
    lr=jnp.asarray(lr, jnp.float32),
    momentum=jnp.asarray(momentum, jnp.float32),
    feedback=classified & feedback,
    g=g,
  )


def aggregation_weights(
  *,
  num_examples,
  feedback,
  g,
  freq_share,
  hparams,
  use_feedback: bool = True,
  base_weights: str = "data_size",
  feedback_weight: str = "reference",
) -> jnp.ndarray:
  """Mod 3 weights p [K] of the K arrivals, normalised (all zero if they all are)."""
  k = num_examples.shape[0]
  if base_weights == "data_size":
    p = base.data_size_weights(num_examples)
  else:
    p = jnp.full((k,), 1.0 / k)
  if use_feedback:
    phi = hparams["phi"]
    if feedback_weight == "reference":
      boost = (math.e / 2.0) ** (phi - freq_share) * (1.0 + jnp.minimum(g, hparams["g_max"]) ** 2)
    else:
      boost = jnp.exp(phi - freq_share) / (2.0 * phi - freq_share) * (1.0 + g) / (2.0 * k)
    p = jnp.where(feedback, p * boost, p)
  total = jnp.sum(p)
  return jnp.where(total != 0, p / jnp.where(total != 0, total, 1.0), 0.0)


def fedqs(
  variant: str = "sgd",
  similarity_fn: str = "cosine",
  use_momentum: bool = True,
  use_feedback: bool = True,
  adaptive_lr: bool = True,
  base_weights: str = "data_size",
  feedback_weight: str = "reference",
) -> base.Algorithm:
  """FedQS-SGD (`variant="sgd"`) or FedQS-Avg (`variant="avg"`)."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown FedQS variant {variant!r}; expected one of {VARIANTS}")

  def optimizer(h):
    return base.server_sgd(h["server_lr"])

  def init(params, num_clients, h):
    zeros = jnp.zeros((num_clients,), jnp.float32)
    clients = FedQSClientState(
      prev_update=jax.tree.map(lambda x: jnp.zeros((num_clients, *x.shape), x.dtype), params),
      has_prev=jnp.zeros((num_clients,), bool),
      lr=zeros,  # 0 = not set yet: the first task uses the local lr
      momentum=zeros,
      theta=zeros,
      g=zeros,
      feedback=jnp.zeros((num_clients,), bool),
    )
    server = FedQSServerState(
      freq=zeros,
      theta=zeros,
      f_bar=zeros[0],
      theta_bar=zeros[0],
      optimizer=optimizer(h).init(params) if variant == "sgd" else (),
    )
    return server, clients

  def client_begin(row: FedQSClientState, server: FedQSServerState, b: base.Broadcast, h):
    # Mod 1: pseudo-global gradient and dissimilarity to the previous local update.
    pseudo_gradient = pseudo_global_gradient(b.params, b.prev_params)
    theta = jnp.where(
      row.has_prev, similarity.dissimilarity(similarity_fn, row.prev_update, pseudo_gradient), 0.0
    )
    # Mod 2: type, learning rate, momentum, feedback.
    stored_lr = jnp.where(row.lr > 0, row.lr, h["lr"])
    accuracy, counts = b.class_accuracy(b.params)
    c = classify(
      theta=theta,
      f=relative_frequency(server.freq)[b.client],
      f_bar=server.f_bar,
      theta_bar=server.theta_bar,
      has_prev=row.has_prev,
      lr=stored_lr,
      momentum=row.momentum,
      spread=class_spread(accuracy, counts),
      hparams=h,
      use_momentum=use_momentum,
      adaptive_lr=adaptive_lr,
    )
    row = row._replace(lr=c.lr, momentum=c.momentum, theta=theta, g=c.g, feedback=c.feedback)
    info = {
      name: (c.classified & (c.kind == i)).astype(jnp.float32) for i, name in enumerate(TYPES)
    }
    info.update(
      sbc_straggler=c.straggler.astype(jnp.float32),
      sbc_shift=(c.classified & (c.kind == 3) & ~c.straggler).astype(jnp.float32),
      classified=c.classified.astype(jnp.float32),
      feedback=c.feedback.astype(jnp.float32),
      lr_sum=c.lr,
      momentum_sum=c.momentum,
      theta_sum=theta,
    )
    return base.LocalTask(lr=c.lr, momentum=c.momentum), row, info

  def client_end(row: FedQSClientState, b: base.Broadcast, trained, h):
    del h
    update = jax.tree.map(jnp.subtract, trained, b.params)
    payload = {
      "upload": update if variant == "sgd" else trained,
      "feedback": row.feedback,
      "theta": row.theta,
      "g": row.g,
    }
    return payload, row._replace(prev_update=update, has_prev=jnp.ones((), bool))

  def aggregate(server: FedQSServerState, params, arrivals: base.Arrivals, h):
    up = arrivals.payload
    freq = server.freq.at[arrivals.client].add(1.0)  # before weighting
    freq_share = freq[arrivals.client] / jnp.sum(freq)
    p = aggregation_weights(
      num_examples=arrivals.num_examples,
      feedback=up["feedback"],
      g=up["g"],
      freq_share=freq_share,
      hparams=h,
      use_feedback=use_feedback,
      base_weights=base_weights,
      feedback_weight=feedback_weight,
    )
    mixed = base.weighted_sum(p, up["upload"])
    opt_state = server.optimizer
    if variant == "sgd":
      new, opt_state = base.server_step(optimizer(h), params, mixed, opt_state)
    else:
      new = base.tree_where(jnp.sum(p) > 0, mixed, params)
    theta = server.theta.at[arrivals.client].set(up["theta"])
    f_bar, theta_bar = thresholds(freq, theta)
    metrics = {
      "feedback_uploads": jnp.sum(up["feedback"].astype(jnp.float32)),
      "f_bar": f_bar,
      "theta_bar": theta_bar,
    }
    return new, FedQSServerState(freq, theta, f_bar, theta_bar, opt_state), metrics

  return base.Algorithm(
    name=f"fedqs_{variant}",
    init=init,
    client_begin=client_begin,
    client_end=client_end,
    aggregate=aggregate,
  )


def _check(c) -> None:
  check(c.lr_min <= c.lr_max, "fedqs.lr_min", c.lr_min, f"must be <= fedqs.lr_max={c.lr_max}")


def _spec(variant: str) -> base.AlgorithmSpec:
  def build(c, ctx):
    del ctx
    return fedqs(
      variant=variant,
      similarity_fn=c.similarity,
      use_momentum=c.momentum,
      use_feedback=c.feedback,
      adaptive_lr=c.adaptive_lr,
      base_weights=c.base_weights,
      feedback_weight=c.feedback_weight,
    )

  return base.AlgorithmSpec(
    name=f"fedqs_{variant}",
    section="fedqs",
    build=build,
    # FedQS-Avg replaces the model: it has no server step and no server_lr.
    hparams=HPARAMS if variant == "sgd" else {k: v for k, v in HPARAMS.items() if k != "server_lr"},
    options=OPTIONS,
    check=_check,
    needs_validation_data=True,
    doc=f"FedQS-{variant.upper() if variant == 'sgd' else 'Avg'} (Mods 1-3, ablation switches)",
  )


SPECS = (_spec("sgd"), _spec("avg"))

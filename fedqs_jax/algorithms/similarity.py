"""FedQS Mod 1: the dissimilarity theta between a client's update and the pseudo-global gradient.

At dispatch a FedQS client compares its previous local update Delta_prev with the pseudo-global
gradient L_g = w^v - w^(v-1) (spec FEDQS.md, "Mod 1"). Both are parameter pytrees of the same
structure, e.g. `{"Dense_0": {"kernel": [d_in, d_out], "bias": [d_out]}, ...}`, and
`dissimilarity(name, a, b)` maps them to a `[]` float32 theta; larger means less aligned.

  cosine                   the angle in degrees between the two pytrees, each flattened into one
                           vector (all leaves concatenated): arccos(cos) * 180 / pi.
  cosine_layerwise_minmax  the FedQS reference code's form: per leaf ("layer"), min-max normalise
                           each flattened vector to [0, 1], divide it by its sum, take the angle in
                           degrees; theta = the mean over leaves.
  euclidean                ||a - b||_2 over all leaves (the paper's ablation).
  manhattan                ||a - b||_1 over all leaves (the paper's ablation).

The name is static (it selects the program); everything else is traced, so the function is
jittable and vmappable. Leaves are cast to float32 and all arithmetic is float32.

Numerics. Angles are computed with the stable form angle(u, v) = 2 atan2(|u - v|, |u + v|) of
the unit vectors u = a / |a|, v = b / |b|. It equals arccos(clip(cos, -1, 1)) exactly in real
arithmetic but keeps full float32 precision near 0 and 180 degrees, where arccos loses about
half the digits (identical pytrees give 0 and negated ones 180 to within ~1e-6 degrees, where
a float32 arccos is off by ~0.02). Before any norm is taken each vector is divided by its
largest magnitude (angles are scale invariant, and the
Euclidean norm is rescaled afterwards), so squares neither overflow for huge entries nor flush
to zero for tiny ones: the results are finite for all finite inputs, except euclidean and
manhattan when the true distance itself exceeds the float32 range (~3.4e38).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

SIMILARITIES = ("cosine", "cosine_layerwise_minmax", "euclidean", "manhattan")

__all__ = ["SIMILARITIES", "dissimilarity"]

Params = Any  # a pytree of float arrays
_DEGREES = 180.0 / math.pi


def dissimilarity(name: str, a: Params, b: Params) -> jnp.ndarray:
  """theta(a, b) under the dissimilarity `name` (one of `SIMILARITIES`); larger = less aligned.

  Args:
    name: static choice of measure, one of `SIMILARITIES`.
    a: a pytree of arrays, e.g. the client's previous local update Delta_prev.
    b: a pytree with the same structure and leaf shapes, e.g. the pseudo-global gradient L_g.

  Returns:
    `[]` float32. For `cosine`, degrees in [0, 180], and 0.0 when either pytree is all zeros
    ("no information": FedQS leaves theta = 0 out of its threshold theta_bar). For
    `cosine_layerwise_minmax`, degrees in [0, 90] (min-max normalised vectors are non-negative),
    the mean over leaves; see `_layerwise_minmax_angle` for its guards. For `euclidean` and
    `manhattan`, the distance ||a - b||_2 or ||a - b||_1 (0.0 for identical pytrees).

  Raises:
    ValueError: `name` is not in `SIMILARITIES`, or `a` and `b` differ in structure or shapes.
  """
  if name not in SIMILARITIES:
    raise ValueError(f"unknown similarity {name!r}; expected one of {SIMILARITIES}")
  xs, ys = _paired_leaves(a, b)
  if name == "cosine":
    return _angle_degrees(xs, ys)
  if name == "cosine_layerwise_minmax":
    return _layerwise_minmax_angle(xs, ys)
  diffs = [x - y for x, y in zip(xs, ys, strict=True)]
  if name == "euclidean":
    return _l2_norm(diffs)
  return _sum([jnp.sum(jnp.abs(d)) for d in diffs])


def _paired_leaves(a: Params, b: Params) -> tuple[list[jnp.ndarray], list[jnp.ndarray]]:
  """The leaves of `a` and `b` as float32 arrays, after checking that the pytrees match."""
  xs, tree_a = jax.tree.flatten(a)
  ys, tree_b = jax.tree.flatten(b)
  if tree_a != tree_b:
    raise ValueError(f"pytrees differ in structure: {tree_a} vs {tree_b}")
  xs = [jnp.asarray(x, jnp.float32) for x in xs]
  ys = [jnp.asarray(y, jnp.float32) for y in ys]
  for x, y in zip(xs, ys, strict=True):
    if x.shape != y.shape:
      raise ValueError(f"pytrees differ in a leaf shape: {x.shape} vs {y.shape}")
  return xs, ys


def _sum(scalars: list[jnp.ndarray]) -> jnp.ndarray:
  """The sum of `[]` scalars; 0.0 for an empty list."""
  return jnp.sum(jnp.stack(scalars)) if scalars else jnp.zeros((), jnp.float32)


def _max_abs(leaves: list[jnp.ndarray]) -> jnp.ndarray:
  """`[]` max |x| over all entries of all leaves; 0.0 if there are none."""
  maxima = [jnp.max(jnp.abs(x)) for x in leaves if x.size]
  return jnp.max(jnp.stack(maxima)) if maxima else jnp.zeros((), jnp.float32)


def _rescale(x: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
  """`x / scale` for a `[]` scale > 0 (`x` unchanged if scale <= 0), safe for any finite scale.

  Computed as two multiplications by rsqrt(scale): XLA lowers a division to a multiplication by
  the reciprocal, and 1 / scale for scale >= 2^126 is subnormal and flushed to zero, which would
  turn `x / 3e38` into 0. rsqrt(scale) stays a normal float for every normal scale.
  """
  root = jax.lax.rsqrt(jnp.where(scale > 0, scale, 1.0))
  return (x * root) * root


def _l2_norm(leaves: list[jnp.ndarray]) -> jnp.ndarray:
  """`[]` ||concat(leaves)||_2, rescaled by the max magnitude so squares cannot over/underflow."""
  scale = _max_abs(leaves)
  return scale * jnp.sqrt(_sum([jnp.sum(jnp.square(_rescale(x, scale))) for x in leaves]))


def _angle_degrees(xs: list[jnp.ndarray], ys: list[jnp.ndarray]) -> jnp.ndarray:
  """`[]` angle in degrees between concat(xs) and concat(ys); 0.0 if either is all zeros.

  All sums (norms, |u - v|^2, |u + v|^2) are accumulated leafwise; no concatenated vector is
  built.
  """
  # Divide by the max magnitude: entries in [-1, 1] with one of magnitude ~1, so norms >= ~1
  # (or exactly 0 for an all-zero vector).
  scale_x, scale_y = _max_abs(xs), _max_abs(ys)
  xs = [_rescale(x, scale_x) for x in xs]
  ys = [_rescale(y, scale_y) for y in ys]
  norm_x = jnp.sqrt(_sum([jnp.sum(jnp.square(x)) for x in xs]))
  norm_y = jnp.sqrt(_sum([jnp.sum(jnp.square(y)) for y in ys]))
  informative = (norm_x > 0) & (norm_y > 0)
  us = [x / jnp.where(norm_x > 0, norm_x, 1.0) for x in xs]
  vs = [y / jnp.where(norm_y > 0, norm_y, 1.0) for y in ys]
  # |u - v|^2 + |u + v|^2 = 4 for unit u, v, so atan2 never sees (0, 0) when informative.
  minus = jnp.sqrt(_sum([jnp.sum(jnp.square(u - v)) for u, v in zip(us, vs, strict=True)]))
  plus = jnp.sqrt(_sum([jnp.sum(jnp.square(u + v)) for u, v in zip(us, vs, strict=True)]))
  angle = 2.0 * jnp.arctan2(minus, plus) * _DEGREES
  return jnp.where(informative, angle, 0.0).astype(jnp.float32)


def _minmax_sum_normalise(x: jnp.ndarray) -> jnp.ndarray:
  """`[n]` flattened `x` min-max normalised to [0, 1], then divided by its sum.

  Guards: a constant vector (max == min) normalises to all zeros, and an all-zero vector is not
  divided by its (zero) sum. Otherwise the maximum entry maps to 1 (up to rounding), so the sum
  is >= ~1. Halving first keeps max - min finite for entries near the float32 limit (the
  normalised vector is invariant to scaling, and halving a normal float is exact).
  """
  half = 0.5 * x.reshape(-1)
  low, high = jnp.min(half), jnp.max(half)
  spread = high - low
  unit = jnp.where(spread > 0, _rescale(half - low, spread), 0.0)
  total = jnp.sum(unit)
  return jnp.where(total > 0, unit / jnp.where(total > 0, total, 1.0), 0.0)


def _layerwise_minmax_angle(xs: list[jnp.ndarray], ys: list[jnp.ndarray]) -> jnp.ndarray:
  """`[]` mean over leaves of the angle (degrees) between min-max + sum normalised vectors.

  The FedQS reference code's form. Per leaf: flatten, min-max normalise each vector to [0, 1],
  divide each by its sum, take the angle in degrees. Guards: a constant vector (max == min)
  becomes all zeros; an all-zero vector is left at zero; a leaf where either normalised vector
  is all zeros (or that has no entries) contributes angle 0.0 and still counts in the mean.
  An empty pytree gives 0.0. (Dividing by the sum rescales a vector, so it does not change the
  angle; it is kept for fidelity to the reference.)
  """
  angles = [
    _angle_degrees([_minmax_sum_normalise(x)], [_minmax_sum_normalise(y)])
    if x.size
    else jnp.zeros((), jnp.float32)
    for x, y in zip(xs, ys, strict=True)
  ]
  return jnp.mean(jnp.stack(angles)) if angles else jnp.zeros((), jnp.float32)

"""M-step FedAsync (KAFL; Wu & Wang, ICDCS 2022), as in the FedQS paper's comparison.

Model aggregation over the K arrivals S of a round, each upload the client's local
model w_i, weighted by its deviation from the global model w_g and by how often the
client uploads:

  c_j  += 1 for j in S                              upload counts, before weighting
  lambda_i = | <w_g, w_i> / <w_i, w_i> - 1 |        (0 when w_i = w_g; inf if w_i = 0)
  p_i  proportional to  n_i exp(-2 lambda_i / q_i), normalised over S
  w   <- sum_{i in S} p_i w_i

with q_i the client's upload frequency (option `frequency`):

  "mirrored" (default)  frequent uploaders get a smaller q and a larger penalty
      (spec/BASELINES.md; the FedQS reference's intent): among the arrivals, sorted by
      upload count c_(1) <= ... <= c_(m), the arrival whose count ranks r-th from the
      bottom (r = number of arrivals with a smaller count) gets the count ranked r-th
      from the top: q_i = c_(m - r) / sum_{j in S} c_j. (The reference computes this
      with a loop index reset inside its loop, so every arrival gets arrival 0's q and
      frequency has no effect: not copied.)
  "share"  q_i = c_i / sum_j c_j over all N clients, the literal "share of uploads so
      far" (frequent uploaders then get a larger q and a smaller penalty).

The weights are computed in log space (softmax of log n_i - 2 lambda_i / q_i), so
exp(-2 lambda / q) underflowing for every arrival still gives normalised weights.
Arrivals with n_i = 0 or a zero model get weight 0; if every arrival has, the global
model is kept.

Multi-step ("after uploading, a client keeps training from its own local model until
it receives the next global model"). Under dispatch-time training a client's next
task starts when it is dispatched, with the broadcast w^v. It has received a new
global model iff v differs from the version its previous task started from: then it
trains from w^v; if nothing was aggregated since (same v), it continues from its own
last local model (`LocalTask.start`; client state: the last local model [N, *params]
and its task's version [N]). Option `multi_step=False` always trains from w^v and
keeps no per-client model.

What this means in this simulator: under `sync`, `semi_async`, `async` and
`queueing` a client is re-dispatched only after the aggregation that follows its
upload, with the new model, so every task brings a newer global model and M-step is
model aggregation with the weights above. Under `tick` (the FedQS reference loop) a
client restarts one tick after its upload; the reference continues from the local
model unless an aggregation happened at the upload tick. Two restarts of one client
between the same two aggregations would carry the same v, but the engine trains the
tasks of one dispatch together from the client state of the round's start, so the
second does not see the first's model and neither continues: with the current engine
the own-model branch never fires on any protocol (`dispatch_own_model` counts it).
Reproducing the reference's tick behaviour needs the engine to tell a task whether
its start directly follows an aggregation, and to chain a client's repeated tasks of
one dispatch. How much that matters: in the reference loop with its four latency files
(K = 10, 400 rounds) the backlog makes aggregations almost every tick, and 0.2% (N=200,
1:50), 2.2% (N=100, 1:50), 6.0% (N=50, 1:20) and 6.4% (N=200, 1:100) of the restarts
would continue from the local model.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedqs_jax.algorithms import base

FREQUENCIES = ("mirrored", "share")


class MStepClientState(NamedTuple):
  model: base.Params  # [N, *params] the client's last local model (multi_step only; else ())
  version: jnp.ndarray  # [N] int32 version its last task started from (-1: none yet)


class MStepServerState(NamedTuple):
  uploads: jnp.ndarray  # [N] float32 c_j, uploads aggregated per client


def _vdot(a: base.Params, b: base.Params) -> jnp.ndarray:
  """<a, b> over all leaves, in float32."""
  leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.vdot(x, y).astype(jnp.float32), a, b))
  return sum(leaves, jnp.zeros((), jnp.float32))


def deviation(global_params: base.Params, local: base.Params) -> jnp.ndarray:
  """lambda = |<w_g, w_i> / <w_i, w_i> - 1| of one local model (inf for a zero model)."""
  m, d = _vdot(global_params, local), _vdot(local, local)
  return jnp.where(d > 0, jnp.abs(m / jnp.where(d > 0, d, 1.0) - 1.0), jnp.inf)


def mirrored_share(counts: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """q [K]: each arrival gets the upload count of its mirror rank among the arrivals,
  over the arrivals' total count (see the module docstring); 0 where masked."""
  k = counts.shape[0]
  real = jnp.where(mask, counts, jnp.inf)
  ascending = jnp.sort(real)  # masked entries last
  m = jnp.sum(mask)
  rank = jnp.sum(mask[None, :] & (counts[None, :] < counts[:, None]), axis=1)
  mirror = ascending[jnp.clip(m - 1 - rank, 0, k - 1)]
  total = jnp.sum(jnp.where(mask, counts, 0.0))
  return jnp.where(mask & (total > 0), mirror / jnp.where(total > 0, total, 1.0), 0.0)


def weights(
  num_examples: jnp.ndarray, lam: jnp.ndarray, q: jnp.ndarray, mask: jnp.ndarray
) -> jnp.ndarray:
  """p [K] proportional to n exp(-2 lambda / q) over the valid arrivals, normalised
  (all zeros if none has n > 0, a finite lambda and q > 0)."""
  valid = mask & (num_examples > 0) & jnp.isfinite(lam) & (q > 0)
  penalty = 2.0 * jnp.where(valid, lam, 0.0) / jnp.where(valid, q, 1.0)
  logits = jnp.log(jnp.where(valid, num_examples, 1.0)) - penalty
  return jax.nn.softmax(jnp.where(valid, logits, 0.0), where=valid)  # 0 where not valid


def m_step(frequency: str = "mirrored", multi_step: bool = True) -> base.Algorithm:
  """M-step FedAsync with q from `frequency` and own-model continuation if `multi_step`."""
  if frequency not in FREQUENCIES:
    raise ValueError(f"unknown frequency {frequency!r}; expected one of {FREQUENCIES}")

  def init(params, num_clients, hparams):
    del hparams
    model = (
      jax.tree.map(lambda x: jnp.broadcast_to(x, (num_clients, *x.shape)), params)
      if multi_step
      else ()
    )
    clients = MStepClientState(model, jnp.full((num_clients,), -1, jnp.int32))
    return MStepServerState(jnp.zeros((num_clients,), jnp.float32)), clients

  def client_begin(row: MStepClientState, server_state, b: base.Broadcast, hparams):
    del server_state
    if not multi_step:
      return base.local_task(hparams), row._replace(version=b.version), {}
    own = row.version == b.version  # nothing aggregated since its last task started
    task = base.local_task(hparams, start=base.tree_where(own, row.model, b.params))
    return task, row._replace(version=b.version), {"own_model": own.astype(jnp.float32)}

  def client_end(row: MStepClientState, b: base.Broadcast, trained, hparams):
    del b, hparams
    return trained, (row._replace(model=trained) if multi_step else row)

  def aggregate(server: MStepServerState, params, arrivals: base.Arrivals, hparams):
    del hparams
    mask = arrivals.mask
    uploads = server.uploads.at[arrivals.client].add(mask.astype(jnp.float32))
    counts = uploads[arrivals.client]
    if frequency == "mirrored":
      q = mirrored_share(counts, mask)
    else:
      q = counts / jnp.maximum(jnp.sum(uploads), 1.0)
    lam = jax.vmap(deviation, in_axes=(None, 0))(params, arrivals.payload)
    p = weights(arrivals.num_examples, lam, q, mask)
    mixed = base.weighted_sum(p, arrivals.payload)
    new = base.tree_where(jnp.sum(p) > 0, mixed, params)
    seen = mask & jnp.isfinite(lam)
    mean_lam = jnp.sum(jnp.where(seen, lam, 0.0)) / jnp.maximum(jnp.sum(seen), 1)
    metrics = {"mean_deviation": mean_lam}
    return new, MStepServerState(uploads), metrics

  return base.Algorithm(
    name="m_step",
    init=init,
    client_begin=client_begin,
    client_end=client_end,
    aggregate=aggregate,
  )


SPECS = (
  base.AlgorithmSpec(
    name="m_step",
    section="m_step",
    build=lambda c, ctx: m_step(frequency=c.frequency, multi_step=c.multi_step),
    options={"frequency": ("mirrored", FREQUENCIES), "multi_step": (True, None)},
    doc="KAFL M-step FedAsync: model aggregation weighted by n exp(-2 lambda / q)",
  ),
)

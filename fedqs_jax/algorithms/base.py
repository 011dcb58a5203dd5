"""The algorithm contract: a record of pure functions the engine calls.

An algorithm never sees the schedule machinery. The engine calls, per task,

  client_begin(client_state_i, server_state, broadcast, hparams)
      -> (LocalSettings, client_state_i, info)    at dispatch, before training
  client_end(client_state_i, broadcast, trained_params, hparams)
      -> (payload, client_state_i)                after local training

vmapped over the clients dispatched in a round (`client_state_i` is one row of
the `[N, ...]` client state), and per round

  aggregate(server_state, params, arrivals, hparams)
      -> (params, server_state, metrics)

over the K stacked arrivals. `info` is a dict of per-client scalars (e.g. an
indicator of the client's type, its learning rate); the engine reports their
sums over the round's dispatched clients as `dispatch_<name>` metrics, with
`dispatched`, the number of clients. `hparams` is a dict of scalar arrays (learning
rates, staleness exponents, ...) so that a grid can vmap over it; settings that
change the program (a staleness function's name) are closed over by the builder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Params = Any  # a pytree of float arrays
HParams = dict[str, jnp.ndarray]


class Broadcast(NamedTuple):
  """What a dispatched client receives with its task (one client)."""

  params: Params  # w^v, the global model it trains from
  prev_params: Params  # w^(v-1), the global model before the last server step
  client: jnp.ndarray  # [] int32 client id
  version: jnp.ndarray  # [] int32 v
  num_examples: jnp.ndarray  # [] float32 the client's training-set size
  # class_accuracy(params) -> ([C] accuracy in [0, 1], [C] example count) of a model
  # on the client's validation data (all-zero counts if it has none).
  class_accuracy: Callable[[Any], tuple[jnp.ndarray, jnp.ndarray]]


class LocalSettings(NamedTuple):
  """Per-task local optimiser settings decided at dispatch."""

  lr: jnp.ndarray  # [] float32 local learning rate
  momentum: jnp.ndarray  # [] float32 heavy-ball momentum (buffer reset per task)


class Arrivals(NamedTuple):
  """The K updates aggregated in one round (leading axis K, FIFO order)."""

  payload: Any  # pytree with leading axis K, as returned by client_end
  client: jnp.ndarray  # [K] int32
  staleness: jnp.ndarray  # [K] int32 rounds since the task's base version
  num_examples: jnp.ndarray  # [K] float32 the clients' training-set sizes


class Algorithm(NamedTuple):
  """A federated algorithm as pure functions (see module docstring)."""

  name: str
  init: Callable[[Params, int], tuple[Any, Any]]  # (params, N) -> (server, [N] clients)
  client_begin: Callable[..., tuple[LocalSettings, Any, dict[str, jnp.ndarray]]]
  client_end: Callable[..., tuple[Any, Any]]
  aggregate: Callable[..., tuple[Params, Any, dict[str, jnp.ndarray]]]


def stateless_init(params: Params, num_clients: int) -> tuple[tuple, tuple]:
  """`init` of an algorithm with neither server nor client state."""
  del params, num_clients
  return (), ()


def default_begin(
  client_state: Any, server_state: Any, broadcast: Broadcast, hparams: HParams
) -> tuple[LocalSettings, Any, dict]:
  """`client_begin` that trains every task with the run's local lr and momentum."""
  del server_state, broadcast
  settings = LocalSettings(
    lr=jnp.asarray(hparams["lr"], jnp.float32),
    momentum=jnp.asarray(hparams["momentum"], jnp.float32),
  )
  return settings, client_state, {}


def upload_model(client_state, broadcast: Broadcast, trained: Params, hparams: HParams):
  """`client_end` for model aggregation: the payload is the local model w_i."""
  del broadcast, hparams
  return trained, client_state


def upload_update(client_state, broadcast: Broadcast, trained: Params, hparams: HParams):
  """`client_end` for update aggregation: the payload is Delta_i = w_i - w^(v_i)."""
  del hparams
  return jax.tree.map(jnp.subtract, trained, broadcast.params), client_state


def weighted_sum(weights: jnp.ndarray, stacked: Params) -> Params:
  """sum_i weights[i] * stacked[i] for every leaf of a [K, ...] pytree."""
  return jax.tree.map(lambda x: jnp.tensordot(weights.astype(x.dtype), x, axes=1), stacked)


def data_size_weights(num_examples: jnp.ndarray) -> jnp.ndarray:
  """p_i = n_i / sum_j n_j; all zeros if every arriving client is empty."""
  total = jnp.sum(num_examples)
  return jnp.where(total > 0, num_examples / jnp.maximum(total, 1.0), 0.0)


def payload_shape(algorithm: Algorithm, params: Params, client_state: Any, hparams: HParams):
  """Shapes and dtypes of one task's payload: `jax.eval_shape` of `client_end`.

  `client_state` is the algorithm's [N, ...] client state (arrays or shape structs).
  """

  def upload(p, clients):
    row = jax.tree.map(lambda x: x[0], clients)
    broadcast = Broadcast(
      p, p, jnp.int32(0), jnp.int32(0), jnp.float32(1), lambda q: (None, None)
    )  # client_end does not evaluate the probe
    return algorithm.client_end(row, broadcast, p, hparams)[0]

  return jax.eval_shape(upload, params, client_state)


def tree_where(cond: jnp.ndarray, on_true: Params, on_false: Params) -> Params:
  """Leafwise `jnp.where(cond, on_true, on_false)` for a scalar `cond`."""
  return jax.tree.map(lambda x, y: jnp.where(cond, x, y), on_true, on_false)

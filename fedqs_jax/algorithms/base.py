"""The algorithm contract: a record of pure functions the engine calls, and its spec.

An algorithm never sees the schedule machinery. The engine calls, per grid point,

  init(params, num_clients, hparams) -> (server_state, [N] client_state)

per task, vmapped over the clients dispatched in a round (`client_state_i` is one
row of the `[N, ...]` client state),

  client_begin(client_state_i, server_state, broadcast, hparams)
      -> (LocalTask, client_state_i, info)        at dispatch, before training
  client_end(client_state_i, broadcast, trained_params, hparams)
      -> (payload, client_state_i)                after local training

and per round, over the K stacked arrivals,

  aggregate(server_state, params, arrivals, hparams)
      -> (params, server_state, metrics)

`LocalTask` says how the engine trains the task: from where (the broadcast global
model, or parameters the algorithm supplies: M-step's own model, SAFA's cache), with
which lr and momentum, and optionally with a gradient correction (SCAFFOLD-style
control variates) and a proximal pull toward the start point (FedProx). Unused extras
are `None` and cost nothing: the engine then compiles plain local SGD.

`info` is a dict of per-client scalars (e.g. an indicator of the client's type, its
learning rate); the engine reports their sums over the round's dispatched clients as
`dispatch_<name>` metrics, with `dispatched`, the number of clients.

`hparams` is a flat dict of scalar arrays, so that a grid can vmap over it: the local
ones (`lr`, `momentum`, `clip`) and the algorithm's own (its `AlgorithmSpec.hparams`,
unprefixed). Outside the program, in configs, sweeps and CSV columns, they are
namespaced by config section: `local.lr`, `fedbuff.server_lr`. Settings that change
the program (a staleness function's name) are closed over by the builder.

Server steps that move the global model along an aggregated direction are optax
`GradientTransformation`s (`server_sgd`, or any optax chain) built from the point's
hparams, their state kept in the server state: `server_step` applies one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = Any  # a pytree of float arrays
HParams = dict[str, jnp.ndarray]

LOCAL_SECTION = "local"


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
  num_steps: jnp.ndarray | None = None  # [] int32 the task's local SGD steps (the engine's)


class LocalTask(NamedTuple):
  """How one dispatched task is trained, decided at dispatch by `client_begin`.

  Local training minimises, from `start` (None: the broadcast global model w^v),

    f_i(w) + (prox / 2) ||w - start||^2        (prox None: no proximal term)

  with SGD at `lr`, heavy-ball `momentum` (buffer reset per task) and global-norm
  clipping, each gradient plus `correction` (None: none; SCAFFOLD's c - c_i) before
  clipping. `None` extras are static: they add nothing to the compiled program.
  """

  lr: jnp.ndarray  # [] float32 local learning rate
  momentum: jnp.ndarray  # [] float32 heavy-ball momentum
  start: Params | None = None  # parameters training starts from
  correction: Params | None = None  # added to every local gradient
  prox: jnp.ndarray | None = None  # [] float32 proximal strength mu toward `start`


class Arrivals(NamedTuple):
  """The K updates aggregated in one round (leading axis K, FIFO order)."""

  payload: Any  # pytree with leading axis K, as returned by client_end
  client: jnp.ndarray  # [K] int32
  staleness: jnp.ndarray  # [K] int32 rounds since the task's base version
  num_examples: jnp.ndarray  # [K] float32 the clients' training-set sizes
  version: jnp.ndarray  # [K] int32 the global-model version each task trained from
  mask: jnp.ndarray  # [K] bool which arrivals are real (all of them in every protocol today)


class Algorithm(NamedTuple):
  """A federated algorithm as pure functions (see module docstring)."""

  name: str
  init: Callable[[Params, int, HParams], tuple[Any, Any]]
  client_begin: Callable[..., tuple[LocalTask, Any, dict[str, jnp.ndarray]]]
  client_end: Callable[..., tuple[Any, Any]]
  aggregate: Callable[..., tuple[Params, Any, dict[str, jnp.ndarray]]]


# -- the spec: one registration point per algorithm ------------------------------


@dataclasses.dataclass(frozen=True)
class Range:
  """The allowed values of a number: `low` < x < `high` (`closed` ends included)."""

  low: float = -math.inf
  high: float = math.inf
  low_closed: bool = True
  high_closed: bool = True

  def contains(self, value: float) -> bool:
    if not math.isfinite(value):
      return False
    above = value >= self.low if self.low_closed else value > self.low
    below = value <= self.high if self.high_closed else value < self.high
    return above and below

  def __str__(self) -> str:
    lo = ("[" if self.low_closed else "(") + (f"{self.low:g}" if self.low > -math.inf else "-inf")
    hi = (f"{self.high:g}" if self.high < math.inf else "inf") + ("]" if self.high_closed else ")")
    return f"{lo}, {hi}"


POSITIVE = Range(0.0, math.inf, low_closed=False)
NON_NEGATIVE = Range(0.0, math.inf)
FRACTION = Range(0.0, 1.0, high_closed=False)  # [0, 1): momentum-like
UNIT = Range(0.0, 1.0, low_closed=False)  # (0, 1]: mixing rates


@dataclasses.dataclass(frozen=True)
class BuildContext:
  """What an algorithm may know about the run at build time, besides its config section.

  Attributes:
    num_clients: N.
    routing: [N] float64 routing probabilities of a `queueing` run (uniform otherwise).
    latency: [N] float64 the clients' mean service times known to the time model.
    num_examples: [N] the clients' training-set sizes (None where no data is loaded).
  """

  num_clients: int
  routing: np.ndarray
  latency: np.ndarray
  num_examples: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
  """Everything the rest of the simulator needs to know about one algorithm.

  The registry, config validation, `experiments/configs/default.py`'s sections, the
  sweepable names and the CSV columns are all derived from the specs.

  Attributes:
    name: the registered name (`config.algorithms`).
    section: its config section; algorithms may share one (FedQS-SGD and -Avg: "fedqs").
    hparams: the dynamic (grid-sweepable) hyperparameters: name -> (default, Range).
    options: static settings: name -> (default, allowed values); a tuple of allowed
      values, or a `Range` for a static number, or None for any bool.
    build: `build(section_config, context) -> Algorithm`.
    check: optional cross-field validation `check(section_config)` raising `ConfigError`.
    needs_validation_data: it evaluates models on per-client validation data.
    uses_routing: its weights depend on the routing probabilities (queueing runs).
    doc: one line for the config's documentation.
  """

  name: str
  section: str
  build: Callable[[Any, BuildContext], Algorithm]
  hparams: Mapping[str, tuple[float, Range]] = dataclasses.field(default_factory=dict)
  options: Mapping[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)
  check: Callable[[Any], None] | None = None
  needs_validation_data: bool = False
  uses_routing: bool = False
  doc: str = ""

  def defaults(self) -> dict[str, Any]:
    """The config section's fields with their defaults (options first)."""
    return {
      **{k: v[0] for k, v in self.options.items()},
      **{k: v[0] for k, v in self.hparams.items()},
    }

  def hparam_values(self, section_config) -> dict[str, float]:
    """The algorithm's dynamic hyperparameters (unprefixed) from its config section."""
    return {name: float(section_config[name]) for name in self.hparams}


# The local-training hyperparameters every algorithm shares (section "local").
LOCAL_HPARAMS: Mapping[str, Range] = {"lr": POSITIVE, "momentum": FRACTION, "clip": POSITIVE}


# -- reusable pieces -------------------------------------------------------------


def stateless_init(params: Params, num_clients: int, hparams: HParams) -> tuple[tuple, tuple]:
  """`init` of an algorithm with neither server nor client state."""
  del params, num_clients, hparams
  return (), ()


def local_task(hparams: HParams, **extras) -> LocalTask:
  """The task trained with the run's local lr and momentum (plus `extras`)."""
  return LocalTask(
    lr=jnp.asarray(hparams["lr"], jnp.float32),
    momentum=jnp.asarray(hparams["momentum"], jnp.float32),
    **extras,
  )


def default_begin(
  client_state: Any, server_state: Any, broadcast: Broadcast, hparams: HParams
) -> tuple[LocalTask, Any, dict]:
  """`client_begin` that trains every task from w^v with the run's local lr and momentum."""
  del server_state, broadcast
  return local_task(hparams), client_state, {}


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


def server_sgd(lr, momentum=None) -> optax.GradientTransformation:
  """The server's SGD on the aggregated direction: w <- w + lr * m, m <- momentum * m + d.

  `momentum=None` keeps no buffer. Applied by `server_step`, which feeds optax the
  negated direction (optax descends), so `w + lr * d` is reproduced exactly.
  """
  return optax.sgd(lr, momentum=momentum)


def server_step(
  optimizer: optax.GradientTransformation, params: Params, direction: Params, opt_state: Any
) -> tuple[Params, Any]:
  """One server step of `optimizer` along the aggregated `direction` (an ascent direction:
  the mean client update): returns the new global model and optimizer state."""
  descent = jax.tree.map(jnp.negative, direction)
  updates, opt_state = optimizer.update(descent, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def payload_shape(algorithm: Algorithm, params: Params, client_state: Any, hparams: HParams) -> Any:
  """Shapes and dtypes of one task's payload: `jax.eval_shape` of `client_end`.

  `client_state` is the algorithm's [N, ...] client state (arrays or shape structs).
  """

  def upload(p, clients):
    row = jax.tree.map(lambda x: x[0], clients)
    broadcast = Broadcast(
      p, p, jnp.int32(0), jnp.int32(0), jnp.float32(1), lambda q: (None, None), jnp.int32(1)
    )  # client_end does not evaluate the probe
    return algorithm.client_end(row, broadcast, p, hparams)[0]

  return jax.eval_shape(upload, params, client_state)


def tree_where(cond: jnp.ndarray, on_true: Params, on_false: Params) -> Params:
  """Leafwise `jnp.where(cond, on_true, on_false)` for a scalar `cond`."""
  return jax.tree.map(lambda x, y: jnp.where(cond, x, y), on_true, on_false)

"""The training phase: a scan over rounds that consumes a `Schedule`.

Per round t (see `fedqs_jax.schedule`):

  1. gather the K arriving payloads from their slots of the payload buffer;
  2. `algorithm.aggregate` -> global model w^(t+1);
  3. train the clients dispatched with version t + 1, starting from w^(t+1)
     (dispatch-time training), and write their payloads into their slots.

Training at dispatch and delivering at arrival is exactly training at arrival
on the dispatch snapshot, without keeping a history of global models.

Every array function here works on a *batch of grid points* (leading axis G:
seeds, later hyperparameters): one compile serves the whole batch.

Execution modes (`ExecConfig`), because the fastest choice depends on the
model and the backend:

  client_mode  "vmap"   the dispatched clients of a round trained in lockstep;
               "map"    one after another with `lax.map` (a while loop);
               "unroll" one after another in straight-line code.
  round_mode   "scan"   the rounds of a chunk as a `lax.scan`;
               "unroll" the rounds of a chunk in straight-line code.
  local_unroll unroll factor of the local-steps scan (True: fully unrolled).

On XLA:CPU convolutions inside loops are slow, so CNNs run fastest in
`unroll` modes, but their compile time grows with the unrolled work (clients x
local steps x rounds per chunk: tens of seconds per round); dense models want
`vmap` (or `map`) + `scan`. `benchmarks/throughput.py` measures each.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from fedqs_jax.algorithms.base import (
  Algorithm,
  Arrivals,
  Broadcast,
  LocalTask,
  payload_shape,
  tree_where,
)
from fedqs_jax.data.base import FederatedData
from fedqs_jax.schedule import RoundEvents

CLIENT_MODES = ("vmap", "map", "unroll")
ROUND_MODES = ("scan", "unroll")
LOCAL_LOOPS = ("while", "scan")


@dataclasses.dataclass(frozen=True)
class LocalConfig:
  """Static settings of local training (the dynamic lr, momentum, clip are hparams)."""

  batch_size: int = 32
  epochs: int = 2  # exact epochs over the client's own examples (used when steps == 0)
  steps: int = 0  # if > 0: this many minibatch steps, examples drawn with replacement


@dataclasses.dataclass(frozen=True)
class ExecConfig:
  client_mode: str = "vmap"
  round_mode: str = "scan"
  local_loop: str = "while"
  local_unroll: int | bool = 1  # for local_loop="scan"
  rounds_per_chunk: int = 10  # rounds per jitted call; the global model is evaluated after each
  eval_batch_size: int = 1024


@flax.struct.dataclass
class SimState:
  """Everything a run carries between rounds (one grid point; a grid adds axis G).

  Attributes:
    params: w^t, the global model.
    prev_params: w^(t-1) (equals w^0 at t = 0).
    payloads: [S, ...] payload buffer, one slot per task in flight.
    client_state: [N, ...] per-client algorithm state.
    server_state: the algorithm's server state.
    round: [] int32 number of aggregations so far.
    key: PRNG key of local training (minibatch order, dropout).
    diverged: [] bool the run became non-finite; it is frozen since `diverged_round`.
    diverged_round: [] int32 the round whose result was non-finite (-1: none).
  """

  params: Any
  prev_params: Any
  payloads: Any
  client_state: Any
  server_state: Any
  round: jnp.ndarray
  key: jax.Array
  diverged: jnp.ndarray
  diverged_round: jnp.ndarray


DROPOUT_STREAM = 1  # fold_in of a task's key: dropout draws, apart from the minibatch order


class TrainStats(NamedTuple):
  steps: jnp.ndarray  # [] int32 minibatch steps that touched at least one example
  loss: jnp.ndarray  # [] float32 mean training loss over those steps


def local_optimizer(lr, momentum, clip) -> optax.GradientTransformation:
  """Local SGD: clip the gradient's global norm, then heavy-ball momentum.

  From a fresh state (the buffer is reset per task) step e applies
  w_e = w_(e-1) - lr [sum_(r=1..e) momentum^r g_(e-r) + g_e] (FedQS, Mod 2).
  """
  return optax.chain(optax.clip_by_global_norm(clip), optax.sgd(lr, momentum=momentum))


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Mean cross-entropy over the examples where `mask` is set (0 if none)."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1)


class Engine:
  """Builds the jitted functions of one (algorithm, model, data shape, static config).

  Args:
    algorithm: the algorithm record.
    apply_fn: `apply_fn(params, x) -> logits`, pure (evaluation mode).
    train_fn: `train_fn(params, x, key) -> (logits, state)` in training mode (dropout
      drawing from `key`); `state` is a dict of the model's variable collections that
      training updates (BatchNorm's running statistics, `{}` for most models), merged
      into the params pytree after each step: such statistics are then carried, sent
      and averaged like parameters. None: `apply_fn` with no state.
    data: the federated dataset (only its shapes are baked in).
    num_slots: S, payload slots (`Schedule.num_slots`).
    local: local-training settings.
    execution: execution modes.
  """

  def __init__(
    self,
    algorithm: Algorithm,
    apply_fn,
    data: FederatedData,
    num_slots: int,
    local: LocalConfig = LocalConfig(),
    execution: ExecConfig = ExecConfig(),
    train_fn=None,
  ):
    self.algorithm = algorithm
    self.apply_fn = apply_fn
    self.train_fn = train_fn or (lambda p, x, key: (apply_fn(p, x), {}))
    self.num_clients = data.num_clients
    self.max_client_size = data.max_client_size
    self.num_slots = num_slots
    self.local = local
    self.execution = execution
    self.steps_per_epoch = max(math.ceil(self.max_client_size / local.batch_size), 1)
    self.num_local_steps = local.steps if local.steps > 0 else local.epochs * self.steps_per_epoch
    self.traces = 0  # how many times the chunk function was traced (compiled)
    self.init = jax.jit(jax.vmap(self._init, in_axes=(0, 0, 0, 0, 0, 0, None)))
    self.run_chunk = jax.jit(
      jax.vmap(self._run_chunk, in_axes=(0, 0, 0, None)), donate_argnums=(0,)
    )
    self.evaluate = jax.jit(jax.vmap(self._evaluate, in_axes=(0, None, None)))

  # -- local training (one client) -------------------------------------------

  def num_steps(self, count):
    """Local steps of a client with `count` examples: E * ceil(count / B), or `steps`."""
    if self.local.steps > 0:
      return jnp.where(count > 0, self.local.steps, 0)
    return self.local.epochs * ((count + self.local.batch_size - 1) // self.local.batch_size)

  def _orders(self, key, count):
    """[E, max_n] one uniform permutation of the client's examples per epoch, padding last."""
    max_n = self.max_client_size
    valid = jnp.arange(max_n) < count
    keys = jax.random.split(key, max(self.local.epochs, 1))
    return jax.vmap(lambda k: jnp.argsort(jnp.where(valid, jax.random.uniform(k, (max_n,)), 2.0)))(
      keys
    )

  def _batch(self, key, orders, count, step):
    """Positions [B] into the client's index row for local step `step`, and their mask.

    Epoch mode: step s is batch s % spe of epoch s // spe with spe = ceil(count / B),
    so the client's steps are a prefix and its last partial batch is masked. Steps
    mode: B positions drawn uniformly with replacement.
    """
    b = self.local.batch_size
    if self.local.steps > 0:
      u = jax.random.uniform(jax.random.fold_in(key, step), (b,))
      positions = jnp.minimum((u * count).astype(jnp.int32), jnp.maximum(count - 1, 0))
      return positions, jnp.broadcast_to(count > 0, (b,))
    spe = jnp.maximum((count + b - 1) // b, 1)
    epoch = jnp.minimum(step // spe, self.local.epochs - 1)
    index = (step % spe) * b + jnp.arange(b)
    positions = orders[epoch, jnp.minimum(index, self.max_client_size - 1)]
    return positions, index < count

  def batch_plan(self, key, count):
    """All batches of a client, [max_steps, B] positions and mask (steps past its own: masked)."""
    orders = self._orders(key, count)
    steps = jnp.arange(self.num_local_steps)
    positions, mask = jax.vmap(lambda s: self._batch(key, orders, count, s))(steps)
    return positions, mask & (steps < self.num_steps(count))[:, None]

  def local_train(self, params, task: LocalTask, client, key, hparams, data: FederatedData):
    """SGD with heavy-ball momentum (reset per task) and global-norm clipping.

    Trains from `task.start` (None: `params`, the broadcast global model), adding
    `task.correction` to every gradient and the proximal term's gradient
    `task.prox * (w - start)` when they are set (see `LocalTask`); an unset extra
    adds nothing to the program. `local_loop="while"` stops after the client's own
    steps (under vmap: after the longest of the clients trained together); `"scan"`
    always runs the static maximum, masked, and can be unrolled (`local_unroll`).
    """
    start = params if task.start is None else task.start
    count = data.client_count[client]
    row = data.client_index[client]
    num_steps = self.num_steps(count)
    orders = self._orders(key, count)
    opt = local_optimizer(task.lr, task.momentum, hparams["clip"])

    dropout_key = jax.random.fold_in(key, DROPOUT_STREAM)

    def loss_fn(p, x, y, m, step_key):
      logits, model_state = self.train_fn(p, x, step_key)
      return cross_entropy(logits, y, m), model_state

    def sgd_step(p, opt_state, s):
      pos, m = self._batch(key, orders, count, s)
      examples = row[pos]
      (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        p, data.x_train[examples], data.y_train[examples], m, jax.random.fold_in(dropout_key, s)
      )
      if task.prox is not None:  # d/dw (mu / 2) ||w - start||^2
        grads = jax.tree.map(lambda g, w, w0: g + task.prox * (w - w0), grads, p, start)
      if task.correction is not None:
        grads = jax.tree.map(jnp.add, grads, task.correction)
      updates, opt_state = opt.update(grads, opt_state, p)
      new_p = optax.apply_updates(p, updates)
      if model_state:  # the statistics training updates (their gradient is zero)
        new_p = {**new_p, **model_state}
      return new_p, opt_state, loss

    params = start
    init = (params, opt.init(params), jnp.zeros((), jnp.float32))
    if self.execution.local_loop == "while":

      def body(carry):
        s, p, opt_state, total = carry
        p, opt_state, loss = sgd_step(p, opt_state, s)
        return s + 1, p, opt_state, total + loss

      _, trained, _, total = jax.lax.while_loop(
        lambda carry: carry[0] < num_steps, body, (jnp.zeros((), jnp.int32), *init)
      )
    else:

      def step(carry, s):
        p, opt_state, total = carry
        new_p, new_opt_state, loss = sgd_step(p, opt_state, s)
        active = s < num_steps
        p = tree_where(active, new_p, p)
        opt_state = tree_where(active, new_opt_state, opt_state)
        return (p, opt_state, total + jnp.where(active, loss, 0.0)), None

      (trained, _, total), _ = jax.lax.scan(
        step, init, jnp.arange(self.num_local_steps), unroll=self.execution.local_unroll
      )
    mean_loss = total / jnp.maximum(num_steps, 1)
    return trained, TrainStats(num_steps.astype(jnp.int32), mean_loss)

  # -- dispatch: train a round's clients into their slots ----------------------

  def _dispatch(self, state: SimState, clients, slots, mask, version, hparams, data, mode=None):
    """Trains the tasks dispatched with `version` from `state.params`; masked entries are no-ops.

    `mode` overrides `execution.client_mode` (see `_init`).
    """
    algo = self.algorithm
    rows = jax.tree.map(lambda x: x[clients], state.client_state)
    version_key = jax.random.fold_in(state.key, version)
    keys = jax.vmap(lambda s: jax.random.fold_in(version_key, s))(slots)
    counts = data.client_count[clients].astype(jnp.float32)

    def one(client, row, key, count):
      broadcast = Broadcast(
        state.params,
        state.prev_params,
        client,
        version,
        count,
        lambda p: self.class_accuracy(p, client, data),
        self.num_steps(data.client_count[client]).astype(jnp.int32),
      )
      task, row, info = algo.client_begin(row, state.server_state, broadcast, hparams)
      trained, stats = self.local_train(state.params, task, client, key, hparams, data)
      payload, row = algo.client_end(row, broadcast, trained, hparams)
      return payload, row, (stats, info)

    args = (clients, rows, keys, counts)
    mode = mode or self.execution.client_mode
    if mode == "vmap":
      payload, rows, (stats, info) = jax.vmap(one)(*args)
    elif mode == "map":
      payload, rows, (stats, info) = jax.lax.map(lambda a: one(*a), args)
    elif mode == "unroll":
      outs = [one(*jax.tree.map(lambda x, i=i: x[i], args)) for i in range(clients.shape[0])]
      payload, rows, (stats, info) = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
    else:
      raise ValueError(f"unknown client_mode {mode!r}; expected one of {CLIENT_MODES}")

    slot_index = jnp.where(mask, slots, self.num_slots)  # out of range: dropped
    client_index = jnp.where(mask, clients, self.num_clients)
    payloads = jax.tree.map(
      lambda buf, new: buf.at[slot_index].set(new, mode="drop"), state.payloads, payload
    )
    client_state = jax.tree.map(
      lambda cs, new: cs.at[client_index].set(new, mode="drop"), state.client_state, rows
    )
    steps = jnp.sum(jnp.where(mask, stats.steps, 0))
    loss = jnp.sum(jnp.where(mask, stats.loss * stats.steps, 0.0)) / jnp.maximum(steps, 1)
    metrics = {"client_steps": steps, "train_loss": loss, "dispatched": jnp.sum(mask)}
    for name, value in info.items():
      metrics[f"dispatch_{name}"] = jnp.sum(jnp.where(mask, value, 0))
    return state.replace(payloads=payloads, client_state=client_state), metrics

  # -- one grid point -----------------------------------------------------------

  def _init(self, key, params, init_client, init_slot, init_mask, hparams, data) -> SimState:
    """Initial state, with the version-0 tasks already trained into their slots.

    `params` is the point's w^0; `key` its local-training key.
    """
    server_state, client_state = self.algorithm.init(params, self.num_clients, hparams)
    shape = payload_shape(self.algorithm, params, client_state, hparams)
    payloads = jax.tree.map(lambda s: jnp.zeros((self.num_slots, *s.shape), s.dtype), shape)
    state = SimState(
      params=params,
      prev_params=params,
      payloads=payloads,
      client_state=client_state,
      server_state=server_state,
      round=jnp.zeros((), jnp.int32),
      diverged=jnp.zeros((), bool),
      diverged_round=jnp.full((), -1, jnp.int32),
      key=key,
    )
    # The version-0 dispatch (all N clients in semi_async) runs once: unrolling it
    # would cost minutes of compile, so "unroll" trains it with lax.map instead.
    mode = "map" if self.execution.client_mode == "unroll" else None
    state, _ = self._dispatch(
      state, init_client, init_slot, init_mask, jnp.int32(0), hparams, data, mode
    )
    return state

  def _round(self, state: SimState, events: RoundEvents, hparams, data):
    before = state
    payload = jax.tree.map(lambda buf: buf[events.arrival_slot], state.payloads)
    arrivals = Arrivals(
      payload=payload,
      client=events.arrival_client,
      staleness=events.staleness,
      num_examples=data.client_count[events.arrival_client].astype(jnp.float32),
      version=events.arrival_version,
      mask=jnp.ones(events.arrival_client.shape, bool),
    )
    params, server_state, metrics = self.algorithm.aggregate(
      state.server_state, state.params, arrivals, hparams
    )
    state = state.replace(
      params=params, prev_params=state.params, server_state=server_state, round=state.round + 1
    )
    state, train_metrics = self._dispatch(
      state,
      events.dispatch_client,
      events.dispatch_slot,
      events.dispatch_mask,
      state.round,
      hparams,
      data,
    )
    finite = jnp.isfinite(train_metrics["train_loss"]) & jnp.all(
      jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(state.params)])
    )
    state = self._isolate_failure(before, state, finite)
    return state, {**metrics, **train_metrics, "diverged": state.diverged}

  def _run_chunk(self, state: SimState, events: RoundEvents, hparams, data: FederatedData):
    """The next `rounds_per_chunk` rounds of `events` ([T] rounds), then an evaluation.

    The chunk starts at `state.round`, so the host passes the same on-device
    schedule to every call and transfers nothing per chunk.
    """
    self.traces += 1  # Python side effect: runs at trace time only
    r = self.execution.rounds_per_chunk
    events = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, state.round, r, axis=0), events)
    step = functools.partial(self._round, hparams=hparams, data=data)
    if self.execution.round_mode == "scan":
      state, metrics = jax.lax.scan(step, state, events)
    elif self.execution.round_mode == "unroll":
      outs = []
      for i in range(r):
        state, m = step(state, jax.tree.map(lambda x, i=i: x[i], events))
        outs.append(m)
      metrics = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
    else:
      raise ValueError(f"unknown round_mode {self.execution.round_mode!r}")
    accuracy, loss = self._evaluate(state.params, data.x_test, data.y_test)
    return state, metrics, {"test_accuracy": accuracy, "test_loss": loss}

  def class_accuracy(self, params, client, data: FederatedData):
    """Per-class accuracy [C] of `params` on the client's validation data, and counts [C]."""
    index = data.val_index[client]
    mask = jnp.arange(index.shape[0]) < data.val_count[client]
    labels = data.y_train[index]
    correct = jnp.argmax(self.apply_fn(params, data.x_train[index]), -1) == labels
    counts = jax.ops.segment_sum(mask.astype(jnp.float32), labels, data.num_classes)
    hits = jax.ops.segment_sum((mask & correct).astype(jnp.float32), labels, data.num_classes)
    return hits / jnp.maximum(counts, 1.0), counts

  def _isolate_failure(self, before: SimState, after: SimState, finite) -> SimState:
    """Freezes a run whose parameters or loss became non-finite in this round.

    Failure isolation for grids: such a point keeps its last finite global model from
    then on, flagged `diverged` since `diverged_round`, while the other points go on.
    Only the global model (and the previous one) is selected, O(P) per round: a frozen
    point's server and client state may go on changing, even to non-finite values, but
    nothing of it reaches its model again (every later round selects the frozen one),
    and grid points never mix. So [N, P] server caches cost no per-round copy.
    """
    ok = finite & ~before.diverged
    return after.replace(
      params=tree_where(ok, after.params, before.params),
      prev_params=tree_where(ok, after.prev_params, before.prev_params),
      diverged=~ok,
      diverged_round=jnp.where(before.diverged | finite, before.diverged_round, after.round),
    )

  def _evaluate(self, params, x, y):
    """Accuracy and mean cross-entropy of `params` on (x, y), in fixed-size batches."""
    n = x.shape[0]
    b = min(self.execution.eval_batch_size, n)
    batches = math.ceil(n / b)
    pad = batches * b - n
    xp = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)).reshape(batches, b, *x.shape[1:])
    yp = jnp.pad(y, (0, pad)).reshape(batches, b)
    mp = (jnp.arange(batches * b) < n).reshape(batches, b)
    correct, total_loss = 0.0, 0.0
    for i in range(batches):  # few batches: straight-line code
      logits = self.apply_fn(params, xp[i])
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, yp[i])
      correct += jnp.sum((jnp.argmax(logits, -1) == yp[i]) * mp[i])
      total_loss += jnp.sum(losses * mp[i])
    return correct / n, total_loss / n

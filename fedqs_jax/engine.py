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
               "unroll" one after another in straight-line code;
               "lanes"  work-balanced: the round's tasks of all grid points on a
                        device packed into lanes that run tasks back to back.
  round_mode   "scan"   the rounds of a chunk as a `lax.scan`;
               "unroll" the rounds of a chunk in straight-line code.
  local_unroll unroll factor of the local-steps scan (True: fully unrolled).

On XLA:CPU convolutions inside loops are slow, so CNNs run fastest in
`unroll` modes, but their compile time grows with the unrolled work (clients x
local steps x rounds per chunk: tens of seconds per round); dense models want
`vmap` (or `map`) + `scan`. `benchmarks/throughput.py` measures each.

Lockstep (`vmap`) training runs every task of a round, in every grid point, as
long as the longest of them: with skewed client sizes most of the executed steps
are padding (a third of them real on a CIFAR-10 Dirichlet 0.1 split, a sixth for
a grid). `lanes` packs the Gd x K tasks of a round (Gd: the grid points on one
device) longest first into L lanes (`pack_lanes`, on device, from the schedule's
step counts) and runs the lanes vmapped for as many steps as the longest lane:
each task still runs `local_train`'s exact steps, minibatches and arithmetic, and
`client_begin` / `client_end` run per task as before. `benchmarks/lanes.py`
measures the useful fraction and the real client-steps/s of both.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
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

CLIENT_MODES = ("vmap", "map", "unroll", "lanes")
ROUND_MODES = ("scan", "unroll")
# `client_mode="auto"` per backend (`auto_client_mode`). On CPU lockstep is as fast as
# lanes where client sizes are even (digits: 75% of its steps real) and lanes are 3-4x
# faster where they are skewed (CIFAR-10 Dirichlet 0.1: 27%); the default job is the
# former. An accelerator trains the lanes side by side like the lockstep clients, so
# lanes only remove padding there: chosen, not yet measured (`benchmarks/accelerator.py`).
AUTO_CLIENT_MODE = {"cpu": "vmap"}
AUTO_ACCELERATOR_MODE = "lanes"
LOCAL_LOOPS = ("while", "scan")


@dataclasses.dataclass(frozen=True)
class LocalConfig:
  """Static settings of local training (the dynamic lr, momentum, clip are hparams)."""

  batch_size: int = 32
  epochs: int = 2  # exact epochs over the client's own examples (used when steps == 0)
  steps: int = 0  # if > 0: this many minibatch steps, examples drawn with replacement


@dataclasses.dataclass(frozen=True)
class ExecConfig:
  client_mode: str = "vmap"  # one of CLIENT_MODES (a config's "auto": `auto_client_mode`)
  round_mode: str = "scan"
  local_loop: str = "while"
  local_unroll: int | bool = 1  # for local_loop="scan"
  lanes: int = 0  # client_mode="lanes": lanes per device (0: sized from the data, see `num_lanes`)
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


def auto_client_mode(backend: str | None = None) -> str:
  """The client mode `client_mode="auto"` runs on `backend` (None: JAX's default)."""
  return AUTO_CLIENT_MODE.get(backend or jax.default_backend(), AUTO_ACCELERATOR_MODE)


def task_keys(key: jax.Array, version, slots) -> jax.Array:
  """The keys of the tasks dispatched with `version` into `slots` ([K]) from a run's key."""
  version_key = jax.random.fold_in(key, version)
  return jax.vmap(lambda s: jax.random.fold_in(version_key, s))(slots)


def pack_lanes(lengths: jnp.ndarray, num_lanes: int):
  """Packs tasks of `lengths` steps into `num_lanes` lanes, longest first, each to the
  least-loaded lane (LPT; a lane's load is at most 4/3 of the best packing's longest).

  Returns `offset` [M] (the lane step a task starts at), `following` [M] (the task its
  lane runs next, -1: none), `first` [L] (each lane's first task, -1: none) and `span`
  [] (the longest lane's steps). Tasks of length 0 are left out.
  """
  m = lengths.shape[0]

  def assign(carry, t):
    loads, last, following, first, offset = carry
    n = lengths[t]
    lane = jnp.argmin(loads)
    real, previous = n > 0, last[lane]
    offset = offset.at[t].set(loads[lane])
    following = following.at[jnp.where(real & (previous >= 0), previous, m)].set(t, mode="drop")
    first = first.at[jnp.where(real & (previous < 0), lane, num_lanes)].set(t, mode="drop")
    last = last.at[jnp.where(real, lane, num_lanes)].set(t, mode="drop")
    return (loads.at[lane].add(jnp.where(real, n, 0)), last, following, first, offset), None

  none = jnp.full((num_lanes,), -1, jnp.int32)
  carry = (jnp.zeros((num_lanes,), jnp.int32), none, jnp.full((m,), -1, jnp.int32), none)
  carry = (*carry, jnp.zeros((m,), jnp.int32))
  order = jnp.argsort(-lengths, stable=True).astype(jnp.int32)
  (loads, _, following, first, offset), _ = jax.lax.scan(assign, carry, order)
  return offset, following, first, jnp.max(loads)


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
    counts = np.asarray(jax.device_get(data.client_count))
    self._client_steps = np.asarray(self.num_steps(counts))  # on the host, for `num_lanes`
    self.init = jax.jit(self._init_grid)
    self.run_chunk = jax.jit(self._run_chunk_grid, donate_argnums=(0,))
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

  def _sgd_step(
    self, p, opt_state, s, *, opt, task: LocalTask, start, key, orders, count, row, data
  ):
    """Local step `s` of a task: one minibatch gradient (plus the task's extras), one update."""
    pos, m = self._batch(key, orders, count, s)
    examples = row[pos]

    def loss_fn(p, x, y, m, step_key):
      logits, model_state = self.train_fn(p, x, step_key)
      return cross_entropy(logits, y, m), model_state

    dropout_key = jax.random.fold_in(jax.random.fold_in(key, DROPOUT_STREAM), s)
    (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      p, data.x_train[examples], data.y_train[examples], m, dropout_key
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
    num_steps = self.num_steps(count)
    opt = local_optimizer(task.lr, task.momentum, hparams["clip"])
    sgd_step = functools.partial(
      self._sgd_step,
      opt=opt,
      task=task,
      start=start,
      key=key,
      orders=self._orders(key, count),
      count=count,
      row=data.client_index[client],
      data=data,
    )

    init = (start, opt.init(start), jnp.zeros((), jnp.float32))
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

  def _broadcast(self, state: SimState, client, version, data: FederatedData) -> Broadcast:
    count = data.client_count[client]
    return Broadcast(
      state.params,
      state.prev_params,
      client,
      version,
      count.astype(jnp.float32),
      lambda p: self.class_accuracy(p, client, data),
      self.num_steps(count).astype(jnp.int32),
    )

  def _dispatch(self, state: SimState, clients, slots, mask, version, hparams, data, mode=None):
    """Trains the tasks dispatched with `version` from `state.params`; masked entries are no-ops.

    `mode` overrides `execution.client_mode` (see `_init`).
    """
    algo = self.algorithm
    rows = jax.tree.map(lambda x: x[clients], state.client_state)
    keys = task_keys(state.key, version, slots)

    def one(client, row, key):
      broadcast = self._broadcast(state, client, version, data)
      task, row, info = algo.client_begin(row, state.server_state, broadcast, hparams)
      trained, stats = self.local_train(state.params, task, client, key, hparams, data)
      payload, row = algo.client_end(row, broadcast, trained, hparams)
      return payload, row, (stats, info)

    mode = mode or self.execution.client_mode
    if mode == "lanes":  # one grid point's tasks in lanes
      one_point = functools.partial(jax.tree.map, lambda x: jnp.asarray(x)[None])
      args = one_point((state, clients, slots, mask, jnp.asarray(version, jnp.int32), hparams))
      return jax.tree.map(lambda x: x[0], self._dispatch_lanes(*args, data))
    args = (clients, rows, keys)
    if mode == "vmap":
      payload, rows, (stats, info) = jax.vmap(one)(*args)
    elif mode == "map":
      payload, rows, (stats, info) = jax.lax.map(lambda a: one(*a), args)
    elif mode == "unroll":
      outs = [one(*jax.tree.map(lambda x, i=i: x[i], args)) for i in range(clients.shape[0])]
      payload, rows, (stats, info) = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
    else:
      raise ValueError(f"unknown client_mode {mode!r}; expected one of {CLIENT_MODES}")
    return self._write(state, clients, slots, mask, payload, rows, stats, info)

  def _write(self, state: SimState, clients, slots, mask, payload, rows, stats, info):
    """Writes the trained tasks' payloads into their slots and rows into the client state."""
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

  # -- work-balanced dispatch (client_mode="lanes") ------------------------------

  def num_lanes(self, num_tasks: int) -> int:
    """Lanes that train `num_tasks` tasks (a round's, of a device's grid points) together.

    `execution.lanes`, or as many as keep a lane about one longest task long:
    round(num_tasks * mean task / longest task), over the data's clients. Fewer lanes
    pack better but run longer; this many leaves the round about as long as its
    longest task, like lockstep training, while executing close to only real steps.
    """
    if self.execution.lanes > 0:
      return min(self.execution.lanes, num_tasks)
    longest = self._client_steps.max(initial=0)
    if longest == 0:
      return 1
    return int(min(num_tasks, max(1, round(num_tasks * self._client_steps.mean() / longest))))

  def _dispatch_lanes(self, state: SimState, clients, slots, mask, version, hparams, data):
    """`_dispatch` for a batch of grid points (leading axis Gd of everything but `data`).

    `client_begin` and `client_end` run per task as in `_dispatch`; local training of
    all Gd x K tasks is packed into lanes (`train_lanes`) that run tasks back to back.
    """
    algo = self.algorithm
    gd, k = clients.shape

    def begin(state, clients, slots, version, hparams):
      rows = jax.tree.map(lambda x: x[clients], state.client_state)

      def one(client, row):
        broadcast = self._broadcast(state, client, version, data)
        return algo.client_begin(row, state.server_state, broadcast, hparams)

      task, rows, info = jax.vmap(one)(clients, rows)
      return task, rows, info, task_keys(state.key, version, slots)

    tasks, rows, info, keys = jax.vmap(begin)(state, clients, slots, version, hparams)
    lengths = jnp.where(mask, self.num_steps(data.client_count[clients]), 0)
    flat = functools.partial(jax.tree.map, lambda x: x.reshape(gd * k, *x.shape[2:]))
    trained, stats = self.train_lanes(
      state.params,
      flat(tasks),
      jnp.repeat(jnp.arange(gd), k),
      *flat((clients, keys, lengths)),
      hparams,
      data,
    )
    trained, stats = jax.tree.map(lambda x: x.reshape(gd, k, *x.shape[1:]), (trained, stats))

    def end(state, clients, slots, mask, version, rows, trained, stats, info, hparams):
      def one(client, row, trained):
        broadcast = self._broadcast(state, client, version, data)
        return algo.client_end(row, broadcast, trained, hparams)

      payload, rows = jax.vmap(one)(clients, rows, trained)
      return self._write(state, clients, slots, mask, payload, rows, stats, info)

    return jax.vmap(end)(state, clients, slots, mask, version, rows, trained, stats, info, hparams)

  def train_lanes(self, params, tasks: LocalTask, point, clients, keys, lengths, hparams, data):
    """Local training of M tasks packed into lanes: exactly `local_train`'s steps, less padding.

    Lockstep training runs every task as long as the longest; here the host-free plan
    `pack_lanes` assigns the tasks, longest first, to the least-loaded of L lanes
    (`num_lanes`), and one loop runs the lanes for as many steps as the longest lane.
    A lane that finishes a task writes its parameters and starts its next task (fresh
    optimizer state, from that task's start) at the next step. Each task's steps,
    minibatches, dropout draws and arithmetic are `local_train`'s.

    Args:
      params: [Gd] the points' global models (the start of tasks without `start`).
      tasks: [M] the tasks' `LocalTask`s.
      point: [M] int32 the grid point (index into `params`, `hparams`) of each task.
      clients, keys: [M] each task's client and key (`task_keys`).
      lengths: [M] int32 each task's local steps (0: not trained; returns its start).
      hparams: [Gd] the points' hyperparameters.
      data: the federated data.

    Returns:
      The trained parameters [M] and `TrainStats` [M].
    """
    m = lengths.shape[0]
    num_lanes = self.num_lanes(m)
    offset, following, first, span = pack_lanes(lengths, num_lanes)
    counts = data.client_count[clients]
    orders = jax.vmap(self._orders)(keys, counts) if self.local.steps == 0 else None

    def start_of(t):
      source = params if tasks.start is None else tasks.start
      index = point[t] if tasks.start is None else t
      return jax.tree.map(lambda x: x[index], source)

    def lane_step(p, opt_state, t, local_step):
      """Local step `local_step` of task `t` in one lane."""
      task = jax.tree.map(lambda x: x[t], tasks)
      return self._sgd_step(
        p,
        opt_state,
        local_step,
        opt=local_optimizer(task.lr, task.momentum, hparams["clip"][point[t]]),
        task=task,
        start=None if task.prox is None else start_of(t),  # only the proximal term reads it
        key=keys[t],
        orders=None if orders is None else orders[t],
        count=counts[t],
        row=data.client_index[clients[t]],
        data=data,
      )

    fresh_state = jax.vmap(local_optimizer(0.0, 0.0, 1.0).init)
    where = jax.vmap(tree_where)  # per lane

    def begin_tasks(fresh, t, p, opt_state, total):
      """Lanes whose task starts now: its start parameters, a fresh optimizer state."""
      start = jax.vmap(start_of)(t)
      return (
        where(fresh, start, p),
        where(fresh, fresh_state(start), opt_state),
        jnp.where(fresh, 0.0, total),
      )

    def body(carry):
      s, cur, p, opt_state, total, trained, totals = carry
      t = jnp.maximum(cur, 0)  # cur: the lane's task, -1: none left
      cur = jnp.where((cur >= 0) & (s >= offset[t] + lengths[t]), following[t], cur)
      t, active = jnp.maximum(cur, 0), cur >= 0
      local_step = s - offset[t]
      fresh = active & (local_step == 0)
      p, opt_state, total = jax.lax.cond(
        jnp.any(fresh), begin_tasks, lambda *a: a[2:], fresh, t, p, opt_state, total
      )
      # A lane with no task left steps on, unread: nothing of it is written again.
      p, opt_state, loss = jax.vmap(lane_step)(p, opt_state, t, local_step)
      total = total + jnp.where(active, loss, 0.0)
      done = jnp.where(active & (local_step == lengths[t] - 1), t, m)

      def write(trained, totals):
        trained = jax.tree.map(lambda buf, x: buf.at[done].set(x, mode="drop"), trained, p)
        return trained, totals.at[done].set(total, mode="drop")

      trained, totals = jax.lax.cond(jnp.any(done < m), write, lambda *a: a, trained, totals)
      return s + 1, cur, p, opt_state, total, trained, totals

    trained = jax.tree.map(lambda x: x[point], params) if tasks.start is None else tasks.start
    lane = jax.tree.map(lambda x: jnp.zeros((num_lanes, *x.shape[1:]), x.dtype), trained)
    zeros = jnp.zeros((num_lanes,), jnp.float32)
    carry = (jnp.zeros((), jnp.int32), first, lane, fresh_state(lane), zeros, trained)
    *_, trained, totals = jax.lax.while_loop(lambda c: c[0] < span, body, (*carry, jnp.zeros((m,))))
    stats = TrainStats(lengths.astype(jnp.int32), totals / jnp.maximum(lengths, 1))
    return trained, stats

  # -- one grid point -----------------------------------------------------------

  def _initial_state(self, key, params, hparams) -> SimState:
    """The state of a point before its version-0 tasks: `params` is w^0, `key` its
    local-training key."""
    server_state, client_state = self.algorithm.init(params, self.num_clients, hparams)
    shape = payload_shape(self.algorithm, params, client_state, hparams)
    payloads = jax.tree.map(lambda s: jnp.zeros((self.num_slots, *s.shape), s.dtype), shape)
    return SimState(
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

  def _init(self, key, params, init_client, init_slot, init_mask, hparams, data) -> SimState:
    """Initial state, with the version-0 tasks already trained into their slots."""
    state = self._initial_state(key, params, hparams)
    # The version-0 dispatch (all N clients in semi_async) runs once: unrolling it
    # would cost minutes of compile, so "unroll" trains it with lax.map instead.
    mode = "map" if self.execution.client_mode == "unroll" else None
    state, _ = self._dispatch(
      state, init_client, init_slot, init_mask, jnp.int32(0), hparams, data, mode
    )
    return state

  def _aggregate(self, state: SimState, events: RoundEvents, hparams, data):
    """Steps 1-2 of a round: the arrivals' payloads aggregated into w^(t+1)."""
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
    return state, metrics

  def _close(self, before: SimState, state: SimState, metrics, train_metrics):
    """The end of a round: failure isolation, the round's metrics."""
    finite = jnp.isfinite(train_metrics["train_loss"]) & jnp.all(
      jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(state.params)])
    )
    state = self._isolate_failure(before, state, finite)
    return state, {**metrics, **train_metrics, "diverged": state.diverged}

  def _round(self, state: SimState, events: RoundEvents, hparams, data):
    before = state
    state, metrics = self._aggregate(state, events, hparams, data)
    state, train_metrics = self._dispatch(
      state,
      events.dispatch_client,
      events.dispatch_slot,
      events.dispatch_mask,
      state.round,
      hparams,
      data,
    )
    return self._close(before, state, metrics, train_metrics)

  def _round_lanes(self, state: SimState, events: RoundEvents, hparams, data):
    """`_round` for a batch of grid points (leading axis Gd), their tasks trained in lanes."""
    before = state
    state, metrics = jax.vmap(self._aggregate, in_axes=(0, 0, 0, None))(
      state, events, hparams, data
    )
    state, train_metrics = self._dispatch_lanes(
      state,
      events.dispatch_client,
      events.dispatch_slot,
      events.dispatch_mask,
      state.round,
      hparams,
      data,
    )
    return jax.vmap(self._close)(before, state, metrics, train_metrics)

  def _rounds(self, step, state, events):
    """`step` over the leading (round) axis of `events`, as `execution.round_mode` says."""
    if self.execution.round_mode == "scan":
      return jax.lax.scan(step, state, events)
    if self.execution.round_mode == "unroll":
      outs = []
      for i in range(self.execution.rounds_per_chunk):
        state, m = step(state, jax.tree.map(lambda x, i=i: x[i], events))
        outs.append(m)
      return state, jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
    raise ValueError(f"unknown round_mode {self.execution.round_mode!r}")

  def _run_chunk(self, state: SimState, events: RoundEvents, hparams, data: FederatedData):
    """The next `rounds_per_chunk` rounds of `events` ([T] rounds), then an evaluation.

    The chunk starts at `state.round`, so the host passes the same on-device
    schedule to every call and transfers nothing per chunk.
    """
    self.traces += 1  # Python side effect: runs at trace time only
    r = self.execution.rounds_per_chunk
    events = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, state.round, r, axis=0), events)
    step = functools.partial(self._round, hparams=hparams, data=data)
    state, metrics = self._rounds(step, state, events)
    accuracy, loss = self._evaluate(state.params, data.x_test, data.y_test)
    return state, metrics, {"test_accuracy": accuracy, "test_loss": loss}

  def _run_chunk_lanes(self, state: SimState, events: RoundEvents, hparams, data):
    """`_run_chunk` for a batch of grid points (leading axis Gd), trained in lanes."""
    self.traces += 1
    r = self.execution.rounds_per_chunk
    start = state.round[0]  # the points of a grid advance together
    events = jax.tree.map(
      lambda x: jnp.swapaxes(jax.lax.dynamic_slice_in_dim(x, start, r, axis=1), 0, 1), events
    )
    step = functools.partial(self._round_lanes, hparams=hparams, data=data)
    state, metrics = self._rounds(step, state, events)
    metrics = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), metrics)
    accuracy, loss = jax.vmap(self._evaluate, in_axes=(0, None, None))(
      state.params, data.x_test, data.y_test
    )
    return state, metrics, {"test_accuracy": accuracy, "test_loss": loss}

  # -- the grid (leading axis G) --------------------------------------------------

  def _device_groups(self, g: int) -> int:
    """Groups of grid points whose tasks share lanes: one per device the grid is sharded
    over (its axis is padded to a multiple of the device count), so no lane crosses
    devices."""
    d = jax.device_count()
    return d if g % d == 0 else 1

  def _per_group(self, fn, *args, data):
    """`fn(*args, data)` on each device group: [G, ...] -> [D, G/D, ...], vmapped over D."""
    d = self._device_groups(jax.tree.leaves(args)[0].shape[0])
    split = lambda x: x.reshape(d, x.shape[0] // d, *x.shape[1:])  # noqa: E731
    out = jax.vmap(lambda *a: fn(*a, data))(*jax.tree.map(split, args))
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), out)

  def _init_grid(self, keys, params, init_client, init_slot, init_mask, hparams, data):
    if self.execution.client_mode != "lanes":
      return jax.vmap(self._init, in_axes=(0, 0, 0, 0, 0, 0, None))(
        keys, params, init_client, init_slot, init_mask, hparams, data
      )
    state = jax.vmap(self._initial_state)(keys, params, hparams)

    def dispatch(state, clients, slots, mask, hparams, data):
      version = jnp.zeros(clients.shape[:1], jnp.int32)
      return self._dispatch_lanes(state, clients, slots, mask, version, hparams, data)[0]

    return self._per_group(dispatch, state, init_client, init_slot, init_mask, hparams, data=data)

  def _run_chunk_grid(self, state, events, hparams, data):
    if self.execution.client_mode != "lanes":
      return jax.vmap(self._run_chunk, in_axes=(0, 0, 0, None))(state, events, hparams, data)
    return self._per_group(self._run_chunk_lanes, state, events, hparams, data=data)

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

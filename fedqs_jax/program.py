"""One algorithm of a run as a program: its model, algorithm, hyperparameters and engine.

`build_program(config, name, data, num_slots)` is the one place that turns a config into
what trains: `run.train`, the memory estimate and the benchmarks all use it, so what
they measure is what a run executes.

Hyperparameters. In configs, sweeps and CSV columns they are namespaced by config
section (`local.lr`, `fedbuff.server_lr`); inside the program they form a flat dict
of the local ones (`lr`, `momentum`, `clip`) and the algorithm's own, each a [G]
array over the grid (`grid_hparams`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fedqs_jax import algorithms, memory, models, schedule, sweep
from fedqs_jax import config as config_lib
from fedqs_jax import pretrained as pretrained_lib
from fedqs_jax.algorithms.base import LOCAL_HPARAMS, Algorithm
from fedqs_jax.data.base import FederatedData
from fedqs_jax.engine import Engine, ExecConfig, LocalConfig, auto_client_mode
from fedqs_jax.models import dual

# Independent PRNG streams of a seed (fold_in of the seed's root key).
SCHEDULE_STREAM, INIT_STREAM, TRAIN_STREAM = 0, 1, 2


def seed_keys(seeds: Sequence[int], stream: int) -> jax.Array:
  """[G] keys: `fold_in(PRNGKey(seed), stream)` for each seed."""
  return jnp.stack([jax.random.fold_in(jax.random.PRNGKey(s), stream) for s in seeds])


def make_schedule(config: ml_collections.ConfigDict) -> schedule.Schedule:
  """The run's schedule, one per seed ([G, ...])."""
  s = config.schedule
  queueing = {}
  if s.protocol == "queueing":
    routing, concurrency = config_lib.queueing_parameters(config)
    queueing = dict(routing=routing, concurrency=concurrency)
  return schedule.build(
    seed_keys(config_lib.seeds(config), SCHEDULE_STREAM),
    config_lib.time_model(config),
    protocol=s.protocol,
    num_rounds=s.num_rounds,
    buffer_size=s.buffer_size,
    clients_per_round=s.clients_per_round or None,
    **queueing,
  )


class ModelFns(NamedTuple):
  """A model as pure functions of the pytree the engine trains and algorithms average.

  That pytree is the 'params' collection, or for models with state that training
  updates (BatchNorm) the dict of 'params' and those collections.
  """

  init: Callable  # (key, x) -> params pytree
  apply: Callable  # (params, x) -> logits, evaluation mode
  train: Callable  # (params, x, key) -> (logits, updated collections), training mode
  constants: Any = None  # arrays the functions close over (FedSQ's structural copy)


def model_fns(module: nn.Module, stateful: tuple[str, ...] = (), dropout: bool = False) -> ModelFns:
  """`module`'s functions; `stateful`: its collections that training updates
  (`models.stateful_collections`), `dropout`: whether it draws a 'dropout' rng."""

  def variables(p):
    return p if stateful else {"params": p}

  def init(key, x):
    v = module.init(key, x)
    return {k: v[k] for k in ("params", *stateful)} if stateful else v["params"]

  def apply(p, x):
    return module.apply(variables(p), x)

  def train(p, x, key):
    rngs = {"dropout": key} if dropout else None
    if stateful:
      logits, state = module.apply(variables(p), x, train=True, rngs=rngs, mutable=list(stateful))
      return logits, dict(state)
    return module.apply(variables(p), x, train=True, rngs=rngs), {}

  return ModelFns(init, apply, train)


def fedsq_fns(
  module: nn.Module,
  structural: Any,
  init: Callable,
  stateful: tuple[str, ...] = (),
  dropout: bool = False,
  pool: str = "structural",
  batch_norm: str = "batch",
) -> ModelFns:
  """FedSQ's model transform: `module` in dual mode (`models.dual`), gated by the frozen
  `structural` variables, a constant of the run (never trained, sent or stored per
  client); the functions' params are the quantitative copy, trained and aggregated."""

  def variables(p):
    return p if stateful else {"params": p}

  gates = variables(structural)

  def apply(p, x):
    return dual.dual_apply(module, gates, variables(p), x, pool=pool, batch_norm=batch_norm)

  def train(p, x, key):
    kw = dict(train=True, rngs={"dropout": key} if dropout else None, pool=pool,
              batch_norm=batch_norm)  # fmt: skip
    if stateful:
      logits, state = dual.dual_apply(module, gates, variables(p), x, mutable=list(stateful), **kw)
      return logits, dict(state)
    return dual.dual_apply(module, gates, variables(p), x, **kw), {}

  return ModelFns(init, apply, train, constants=structural)


def config_model_fns(
  config: ml_collections.ConfigDict, num_classes: int, sample: jnp.ndarray
) -> tuple[nn.Module, ModelFns]:
  """The module of `config.model` and its functions: warm-started from
  `model.init_checkpoint` if set, in FedSQ's dual mode if `model.fedsq`."""
  m = config.model
  module = models.build(m, num_classes)
  stateful = models.stateful_collections(m)
  fns = model_fns(module, stateful, models.uses_dropout(m))
  if not m.get("init_checkpoint", ""):
    return module, fns
  head = dual.head_path(module, sample)
  init, pretrained = pretrained_lib.warm_start(m.init_checkpoint, fns.init, sample, head)
  if not m.get("fedsq", False):
    return module, fns._replace(init=init)
  return module, fedsq_fns(
    module,
    pretrained,
    init,
    stateful,
    models.uses_dropout(m),
    pool=m.get("fedsq_pool", "structural"),
    batch_norm=m.get("fedsq_batch_norm", "batch"),
  )


def make_engine(
  config: ml_collections.ConfigDict, algorithm: Algorithm, model: ModelFns, data, num_slots: int
) -> Engine:
  """The engine of `config`'s local training and execution modes."""
  loc, e = config.local, config.engine
  return Engine(
    algorithm,
    model.apply,
    data,
    num_slots,
    train_fn=model.train,
    local=LocalConfig(batch_size=loc.batch_size, epochs=loc.epochs, steps=loc.steps),
    execution=ExecConfig(
      client_mode=auto_client_mode() if e.client_mode == "auto" else e.client_mode,
      round_mode=e.round_mode,
      local_loop=e.local_loop,
      local_unroll=e.local_unroll,
      lanes=e.get("lanes", 0),
      rounds_per_chunk=e.eval_every,
    ),
  )


class Program(NamedTuple):
  """One algorithm of a run, ready to initialise and train.

  Attributes:
    name: the name it runs under (a variant's own name).
    config: the config it runs with (a variant's overrides applied).
    module: the Flax model.
    model: the model's functions.
    algorithm: the algorithm record.
    hparams: this config's value of each program hyperparameter (flat keys).
    names: namespaced name -> flat key, for every hyperparameter of the program.
    points: the run's sweep restricted to these hyperparameters (namespaced), [{}]: none.
    engine: its engine, for `num_slots` payload slots of the data's shapes.
  """

  name: str
  config: ml_collections.ConfigDict
  module: nn.Module
  model: ModelFns
  algorithm: Algorithm
  hparams: dict[str, float]
  names: dict[str, str]
  points: list[dict]
  engine: Engine

  def grid_hparams(self, points: Sequence[dict]) -> dict[str, jnp.ndarray]:
    """Each hyperparameter as a [G] float32 array: `points` (namespaced) over this config."""
    flat = [dict(self.hparams) for _ in points]
    for values, point in zip(flat, points, strict=True):
      for name, value in point.items():
        if name in self.names:
          values[self.names[name]] = value
    return {k: jnp.asarray([v[k] for v in flat], jnp.float32) for k in self.hparams}


def build_program(
  config: ml_collections.ConfigDict, name: str, data: FederatedData, num_slots: int
) -> Program:
  """The program of algorithm (or variant) `name` of `config` on `data`."""
  base_name, resolved = config_lib.resolve(name, config)
  module, model = config_model_fns(resolved, data.num_classes, data.x_train[:1])
  context = dataclasses.replace(
    config_lib.build_context(resolved), num_examples=np.asarray(data.client_count)
  )
  algorithm, own = algorithms.build(base_name, resolved, context)
  loc = resolved.local
  hparams = {**{k: float(loc[k]) for k in LOCAL_HPARAMS}, **own}
  names = algorithms.hparam_names(base_name)
  points = sweep.restrict(sweep.points(resolved), list(names))
  engine = make_engine(resolved, algorithm, model, data, num_slots)
  return Program(name, resolved, module, model, algorithm, hparams, names, points, engine)


def memory_estimate(
  program: Program, data: FederatedData, sched: schedule.Schedule
) -> dict[str, Any]:
  """`memory.estimate` of the program's grid on this run's schedule."""
  config, module = program.config, program.module
  stateful = models.stateful_collections(config.model)
  sample = data.x_train[:1]
  params = jax.eval_shape(lambda: program.model.init(jax.random.PRNGKey(0), sample))
  batch = jax.ShapeDtypeStruct((config.local.batch_size, *sample.shape[1:]), sample.dtype)

  def intermediates(p, x):  # every submodule's output on one minibatch
    v = p if stateful else {"params": p}
    return module.apply(v, x, capture_intermediates=True, mutable=["intermediates"])[1]

  outputs = memory.tree_bytes(jax.eval_shape(intermediates, params, batch))
  # Inputs, every output and its cotangent; FedSQ adds the structural forward pass.
  activations = memory.tree_bytes(batch) + (2 + (program.model.constants is not None)) * outputs
  width = max(sched.init_client.shape[-1], sched.dispatch_client.shape[-1])
  grid = len(program.points) * config.num_seeds
  lanes = None
  if program.engine.execution.client_mode == "lanes":  # a device's points share its lanes
    points = -(-grid // jax.device_count())
    lanes = program.engine.num_lanes(points * width) / points
  return memory.estimate(
    program.algorithm,
    params,
    data,
    num_slots=sched.num_slots,
    train_width=width,
    grid_size=grid,
    hparams=program.hparams,
    num_devices=jax.device_count(),
    activation_bytes=activations,
    # FedSQ's structural copy: once per device, and a second forward pass per minibatch.
    constant_bytes=memory.tree_bytes(program.model.constants),
    train_lanes=lanes,
  )


def check_memory(program: Program, data: FederatedData, sched: schedule.Schedule) -> dict[str, Any]:
  """The program's `memory_estimate`; raises `ConfigError` if its grid does not fit the
  device (see `memory`)."""
  estimate = memory_estimate(program, data, sched)
  limit_gb = program.config.engine.get("memory_limit_gb", 0.0)
  limit = int(limit_gb * 2**30) if limit_gb > 0 else memory.available_bytes()
  memory.check_fits(estimate, limit)
  return estimate

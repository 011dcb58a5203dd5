"""Validating a run's `ml_collections.ConfigDict` and building its time model.

`validate` checks every field before anything is compiled and raises one
`ConfigError` naming the field and its allowed range. The config layout is the
one of `experiments/configs/default.py`.
"""

from __future__ import annotations

import csv
import os

import ml_collections
import numpy as np

from fedqs_jax import algorithms, data, models, pretrained, schedule, sweep
from fedqs_jax.engine import CLIENT_MODES, LOCAL_LOOPS, ROUND_MODES
from fedqs_jax.errors import ConfigError, check, check_text_file
from fedqs_jax.models import dual


def algorithm_names(config: ml_collections.ConfigDict) -> list[str]:
  """`config.algorithms` ("fedavg,fedsgd" or a sequence) as a list of names."""
  names = config.algorithms
  if isinstance(names, str):
    names = [n.strip() for n in names.split(",") if n.strip()]
  return list(names)


def resolve(name: str, config: ml_collections.ConfigDict) -> tuple[str, ml_collections.ConfigDict]:
  """The registered algorithm behind `name` and the config it runs with.

  A name in `config.variants` is a variant: `{"base": "fedqs_avg", "fedqs":
  {"feedback": False}}` runs fedqs_avg with those fields overridden, so that
  ablations share the run's schedule and appear under their own names.
  """
  variants = config.get("variants") or {}
  if name not in variants:
    return name, config
  variant = variants[name].to_dict()
  base = variant.pop("base", None)
  check(base is not None, f"variants.{name}.base", base, "must name a registered algorithm")
  resolved = ml_collections.ConfigDict(config.to_dict())
  for section, fields in variant.items():
    check(section in resolved and isinstance(fields, dict), f"variants.{name}.{section}",
          fields, "must override fields of an existing config section")  # fmt: skip
    for field, value in fields.items():
      check(field in resolved[section], f"variants.{name}.{section}.{field}", value,
            f"{section}.{field} is not a config field")  # fmt: skip
      resolved[section][field] = value
  return base, resolved


def seeds(config: ml_collections.ConfigDict) -> list[int]:
  return [config.seed + i for i in range(config.num_seeds)]


def load_latencies(time: ml_collections.ConfigDict, num_clients: int) -> np.ndarray:
  """Per-client mean latencies [N] from a CSV file, a list, or a speed ratio 1:R.

  A CSV holds one comma-separated row of integer ticks per draw; as in the FedQS
  reference, the LAST row is used and its first N values. With `speed_ratio` R
  the latencies are drawn uniformly from {1, ..., R} with `time.seed`.
  """
  if time.latency_file:
    path = time.latency_file
    check(os.path.isfile(path), "time.latency_file", path, "must be an existing CSV file")
    with open(path, newline="") as f:
      rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    check(bool(rows), "time.latency_file", path, "must contain at least one row")
    cells = [cell.strip() for cell in rows[-1] if cell.strip()]
    try:
      values = [int(cell) for cell in cells]
    except ValueError:
      raise ConfigError(
        f"time.latency_file={path!r} is invalid: its last row must hold integers, "
        f"found {cells[:5]}..."
      ) from None
    check(
      len(values) >= num_clients,
      "time.latency_file",
      path,
      f"its last row must hold at least data.num_clients={num_clients} values, found {len(values)}",
    )
    latencies = np.asarray(values[:num_clients], dtype=np.float64)
    field = "time.latency_file"
  elif time.latencies:
    latencies = np.asarray(time.latencies, dtype=np.float64)
    check(
      latencies.ndim == 1 and len(latencies) >= num_clients,
      "time.latencies",
      tuple(time.latencies),
      f"must list at least data.num_clients={num_clients} values",
    )
    latencies = latencies[:num_clients]
    field = "time.latencies"
  else:
    ratio = time.speed_ratio
    check(
      isinstance(ratio, int) and ratio >= 1, "time.speed_ratio", ratio, "must be an integer >= 1"
    )
    rng = np.random.default_rng(time.seed)
    latencies = rng.integers(1, ratio + 1, size=num_clients).astype(np.float64)
    field = "time.speed_ratio"
  check(
    bool(np.all(np.isfinite(latencies)) and np.all(latencies > 0)),
    field,
    latencies.min(initial=np.inf),
    "latencies must be positive and finite",
  )
  return latencies


def queueing_parameters(config: ml_collections.ConfigDict) -> tuple[np.ndarray, int]:
  """([N] routing probabilities p, concurrency C) of `config.schedule` (validated).

  p is uniform and C = N unless `schedule.routing` / `schedule.concurrency` say
  otherwise (see `schedule.queueing_parameters` for the accepted forms).
  """
  s = config.schedule
  return schedule.queueing_parameters(
    s.get("routing"), s.get("concurrency", 0), config.data.num_clients
  )


def build_context(config: ml_collections.ConfigDict) -> algorithms.BuildContext:
  """What an algorithm may know of the run at build time: N, the routing, the latencies."""
  n = config.data.num_clients
  return algorithms.BuildContext(
    num_clients=n,
    routing=queueing_parameters(config)[0],
    latency=load_latencies(config.time, n),
  )


def time_model(config: ml_collections.ConfigDict) -> schedule.TimeModel:
  latencies = load_latencies(config.time, config.data.num_clients)
  return schedule.TimeModel(
    latency=np.asarray(latencies, np.float32),
    distribution=config.time.distribution,
    sigma=float(config.time.sigma),
  )


def _validate_warm_start(model: ml_collections.ConfigDict) -> None:
  """`model.init_checkpoint` is a pretrained model's folder; FedSQ needs one and ReLU gates."""
  folder = model.get("init_checkpoint", "")
  if folder:
    pretrained.metadata(folder)
  if model.get("fedsq", False):
    dual.validate_dual(model)
    check(bool(folder), "model.init_checkpoint", folder,
          "FedSQ (model.fedsq) fine-tunes a pretrained model: give the folder written by "
          "python -m experiments.pretrain")  # fmt: skip
    pool, norm = model.get("fedsq_pool", "structural"), model.get("fedsq_batch_norm", "batch")
    check(pool in dual.POOL_MODES, "model.fedsq_pool", pool, f"must be one of {dual.POOL_MODES}")
    check(norm in dual.BATCH_NORM_MODES, "model.fedsq_batch_norm", norm,
          f"must be one of {dual.BATCH_NORM_MODES}")  # fmt: skip


# The smallest normal float32: XLA flushes smaller (subnormal) values to 0 on CPU and GPU.
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_float(field: str, value: float) -> None:
  """Raises `ConfigError` unless `value` is finite and survives float32, the dtype the
  run computes in: no overflow to inf, and no nonzero value that becomes 0."""
  check(bool(np.isfinite(value)), field, value, "must be a finite number")
  check(abs(value) <= FLOAT32_MAX, field, value,
        f"overflows float32, the dtype the run computes in (max {FLOAT32_MAX:.4g})")  # fmt: skip
  check(value == 0 or abs(value) >= FLOAT32_TINY, field, value,
        f"is 0 in float32, the dtype the run computes in (smallest normal {FLOAT32_TINY:.4g}):"
        " use 0 or a larger magnitude")  # fmt: skip


def check_floats(node, prefix: str = "") -> None:
  """`check_float` on every float field of a config (and every float in a tuple/list field)."""
  for key, value in node.items():
    field = f"{prefix}{key}"
    if isinstance(value, dict | ml_collections.ConfigDict):
      check_floats(value, field + ".")
    elif isinstance(value, float | np.floating):
      check_float(field, float(value))
    elif isinstance(value, tuple | list):
      for v in value:
        if isinstance(v, float | np.floating):
          check_float(field, float(v))


def validate(config: ml_collections.ConfigDict, workdir: str | None = None) -> None:
  """Raises `ConfigError` for the first invalid field; compiles nothing."""
  check_floats(config)
  names = algorithm_names(config)
  check(bool(names), "algorithms", config.algorithms, "must name at least one algorithm")
  twice = sorted({name for name in names if names.count(name) > 1})
  check(not twice, "algorithms", config.algorithms,
        f"lists {', '.join(twice)} more than once: each algorithm runs once")  # fmt: skip
  bases = [resolve(name, config)[0] for name in names]
  for name in names:
    algorithms.validate(*resolve(name, config))
  check(config.num_seeds >= 1, "num_seeds", config.num_seeds, "must be >= 1")
  check(
    0 < config.target_accuracy <= 1, "target_accuracy", config.target_accuracy, "must be in (0, 1]"
  )
  data.validate(config.data)
  for base in bases:
    if algorithms.spec(base).needs_validation_data:
      check(config.data.get("validation_fraction", 0.0) > 0, "data.validation_fraction",
            config.data.get("validation_fraction", 0.0),
            f"{base} needs per-client validation data: use e.g. 0.2")  # fmt: skip
  models.validate(config.model)
  for name in names:  # a variant may switch FedSQ on for one algorithm
    _validate_warm_start(resolve(name, config)[1].model)
  if config.model.name in models.IMAGE_MODELS:
    check(config.data.name in data.IMAGE_DATASETS, "model.name", config.model.name,
          f"{config.model.name} needs image data: data.name in {data.IMAGE_DATASETS}")  # fmt: skip
  if (config.model.name in models.TOKEN_MODELS) != (config.data.name in data.TOKEN_DATASETS):
    check(False, "model.name", config.model.name, f"character data (data.name in "
          f"{data.TOKEN_DATASETS}) and the models {models.TOKEN_MODELS} go together")  # fmt: skip

  n = config.data.num_clients
  s = config.schedule
  check(s.protocol in schedule.PROTOCOLS, "schedule.protocol", s.protocol,
        f"must be one of {schedule.PROTOCOLS}")  # fmt: skip
  check(s.num_rounds >= 1, "schedule.num_rounds", s.num_rounds, "must be >= 1")
  if s.protocol in ("semi_async", "tick"):
    check(1 <= s.buffer_size <= n, "schedule.buffer_size", s.buffer_size,
          f"must be in [1, data.num_clients={n}]")  # fmt: skip
  if s.protocol == "sync":
    check(0 <= s.clients_per_round <= n, "schedule.clients_per_round", s.clients_per_round,
          f"must be in [1, data.num_clients={n}] (0: all clients)")  # fmt: skip
  weighted = [base for base in bases if algorithms.spec(base).uses_routing]
  if s.protocol == "queueing" or weighted:
    routing, concurrency = queueing_parameters(config)
  if s.protocol == "queueing":
    check(1 <= s.buffer_size <= concurrency, "schedule.buffer_size", s.buffer_size,
          f"must be in [1, schedule.concurrency={concurrency}] (tasks in circulation)")  # fmt: skip
  elif weighted:
    check(bool(np.allclose(routing, 1.0 / n)), "schedule.routing", s.get("routing"),
          f"non-uniform routing needs schedule.protocol='queueing' ({weighted[0]}'s weights "
          "assume clients are drawn from p)")  # fmt: skip
  given = s.get("routing")
  check(s.protocol == "queueing" or bool(weighted) or given is None
        or (isinstance(given, str) and not given.strip()), "schedule.routing", given,
        f"only the queueing protocol (or an algorithm with routing weights, gen_async_sgd) "
        f"uses it, not schedule.protocol={s.protocol!r}: drop it or set the protocol")  # fmt: skip

  t = config.time
  check(t.distribution in schedule.DISTRIBUTIONS, "time.distribution", t.distribution,
        f"must be one of {schedule.DISTRIBUTIONS}")  # fmt: skip
  if t.latency_file:
    check_text_file("time.latency_file", t.latency_file, "CSV file")
  elif t.latencies:
    try:
      np.asarray(t.latencies, dtype=np.float64)
    except (TypeError, ValueError):
      shown = ",".join(map(str, t.latencies)) if isinstance(t.latencies, tuple | list) else None
      check(False, "time.latencies", shown or t.latencies,
            "must be numbers, one per client, e.g. 3,5,8")  # fmt: skip
  latencies = load_latencies(t, n)
  if t.distribution == "lognormal":
    bound = schedule.max_lognormal_sigma(latencies)
    check(bool(np.isfinite(t.sigma)) and 0 < t.sigma <= bound, "time.sigma", t.sigma,
          f"must be in (0, {bound}]: a larger sigma underflows float32 service times to 0 "
          f"(the bound depends on the fastest latency, {latencies.min():.3g})")  # fmt: skip
  if s.protocol == "tick":
    check(t.distribution == "deterministic", "time.distribution", t.distribution,
          "the tick protocol needs 'deterministic' latencies")  # fmt: skip
    check(bool(np.all(latencies == np.round(latencies))), "time.latencies",
          latencies.tolist()[:5], "the tick protocol needs integer latencies")  # fmt: skip

  loc = config.local
  check(loc.batch_size >= 1, "local.batch_size", loc.batch_size, "must be >= 1")
  check(loc.steps >= 0, "local.steps", loc.steps, "must be >= 0 (0: use local.epochs)")
  if loc.steps == 0:
    check(loc.epochs >= 1, "local.epochs", loc.epochs, "must be >= 1 when local.steps == 0")
  check(loc.lr > 0, "local.lr", loc.lr, "must be > 0")
  check(0 <= loc.momentum < 1, "local.momentum", loc.momentum, "must be in [0, 1)")
  check(loc.clip > 0, "local.clip", loc.clip, "must be > 0")

  e = config.engine
  check(e.client_mode in (*CLIENT_MODES, "auto"), "engine.client_mode", e.client_mode,
        f"must be one of {(*CLIENT_MODES, 'auto')}")  # fmt: skip
  check(e.round_mode in ROUND_MODES, "engine.round_mode", e.round_mode,
        f"must be one of {ROUND_MODES}")  # fmt: skip
  check(e.local_loop in LOCAL_LOOPS, "engine.local_loop", e.local_loop,
        f"must be one of {LOCAL_LOOPS}")  # fmt: skip
  check(e.local_unroll >= 1, "engine.local_unroll", e.local_unroll, "must be >= 1")
  lanes = e.get("lanes", 0)
  check(isinstance(lanes, int) and not isinstance(lanes, bool) and lanes >= 0, "engine.lanes",
        lanes, "must be an integer >= 0 (lanes per device; 0: sized from the data)")  # fmt: skip
  check(e.eval_every >= 1 and s.num_rounds % e.eval_every == 0, "engine.eval_every",
        e.eval_every, f"must be >= 1 and divide schedule.num_rounds={s.num_rounds}")  # fmt: skip
  every = e.get("checkpoint_every", 0)
  check(isinstance(every, int) and every >= 0, "engine.checkpoint_every", every,
        "must be an integer >= 0 (chunks between checkpoints; 0: none)")  # fmt: skip
  limit = e.get("memory_limit_gb", 0.0)
  check(isinstance(limit, int | float) and not isinstance(limit, bool) and limit >= 0,
        "engine.memory_limit_gb", limit, "must be >= 0 (GiB; 0: the device's memory)")  # fmt: skip

  grid = sweep.points(config)  # raises for values that are not numbers
  if grid != [{}]:
    known = set()
    for base in bases:
      known |= set(algorithms.hparam_names(base))
    for point in grid:
      for field, value in point.items():
        if sweep.is_static(field):
          continue  # set in its group's config, validated as a field of it
        check_float(f"sweep.{field}", value)
        check(field in known, f"sweep.{field}", value,
              f"no algorithm of this run ({', '.join(names)}) has this hyperparameter")  # fmt: skip
        allowed = algorithms.hparam_range(field)
        check(allowed.contains(value), f"sweep.{field}", value, f"must be in {allowed}")

  if workdir is not None:
    check(bool(workdir), "workdir", workdir, "must be a folder path")
    check(not os.path.exists(workdir) or os.path.isdir(workdir), "workdir", workdir,
          "exists and is not a folder")  # fmt: skip

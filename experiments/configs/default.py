"""The default comparison: FedAvg, FedSGD, FedBuff and FedAsync on one schedule.

Digits (scikit-learn's bundled 8x8 handwritten digits), N = 100 clients,
HeteroDiri Dirichlet 0.1, latencies drawn from 1..50 (speed ratio 1:50),
semi-asynchronous aggregation of K = 10 arrivals, an MLP.

  python -m experiments.main --workdir=runs/default

Every field can be overridden on the command line, e.g.
`--config.schedule.num_rounds=100 --config.algorithms=fedavg,fedbuff`.
"""

import ml_collections

from fedqs_jax import algorithms


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.algorithms = "fedavg,fedsgd,fedbuff,fedasync"
  config.seed = 0  # root seed: schedule, initialisation and local training
  config.num_seeds = 1  # seeds seed .. seed + num_seeds - 1, run as one vmapped batch
  config.target_accuracy = 0.8

  config.data = ml_collections.ConfigDict()
  config.data.name = "digits"
  config.data.num_clients = 100
  config.data.partition = "dirichlet"
  config.data.dirichlet_alpha = 0.1
  config.data.test_fraction = 0.2
  config.data.synthetic_alpha = 1.0
  config.data.synthetic_beta = 1.0
  config.data.seed = 0  # the partition is shared by all seeds of a run
  config.data.validation_fraction = 0.0  # per-client validation data (FedQS's SBC check)
  config.data.validation_mode = "holdout"  # holdout (paper, 8:2) | reference (20 per class)
  config.data.plays = "all"  # shakespeare: all | source | target (disjoint halves of the plays)

  config.model = ml_collections.ConfigDict()
  config.model.name = "mlp"
  config.model.hidden = (64,)
  config.model.channels = (16, 32)
  # Warm start: a folder written by `python -m experiments.pretrain` ("" = random init).
  config.model.init_checkpoint = ""
  # FedSQ (spec/FEDSQ.md): train the model in dual mode, gated by the frozen pretrained copy;
  # combines with every algorithm (as a variant: {"base": "fedavg", "model": {"fedsq": True}}).
  config.model.fedsq = False
  config.model.fedsq_pool = "structural"  # max-pool at the structural argmax | "normal"
  config.model.fedsq_batch_norm = "batch"  # batch statistics | "frozen" pretrained ones

  config.schedule = ml_collections.ConfigDict()
  config.schedule.protocol = "semi_async"
  config.schedule.num_rounds = 300
  config.schedule.buffer_size = 10  # K
  config.schedule.clients_per_round = 0  # M for `sync`; 0 = all clients
  # `queueing` (closed queueing network, spec/QUEUEING.md): C tasks circulate and each new
  # task goes to client j with probability p_j. concurrency: C (0 = N, or the routing file's
  # C). routing: None or "" (uniform), N probabilities ("0.1,0.2,..." or a tuple), or a JSON
  # file {"routing": [...], "concurrency": C} written by `experiments.queueing --out`.
  config.schedule.concurrency = 0
  config.schedule.routing = ml_collections.config_dict.placeholder(object)

  config.time = ml_collections.ConfigDict()
  config.time.distribution = "deterministic"
  config.time.latency_file = ""  # e.g. ../shared/data/fedqs_resources/resources_No_100_max_50.csv
  config.time.latencies = ml_collections.config_dict.placeholder(tuple)
  config.time.speed_ratio = 50  # used when neither a file nor a list is given
  config.time.seed = 0
  config.time.sigma = 0.5  # lognormal only

  config.local = ml_collections.ConfigDict()
  config.local.batch_size = 32
  config.local.epochs = 2
  config.local.steps = 0
  config.local.lr = 0.1
  config.local.momentum = 0.0
  config.local.clip = 20.0

  config.engine = ml_collections.ConfigDict()
  # How a round's tasks train: "vmap" (lockstep), "map", "unroll", "lanes" (work-balanced:
  # packed back to back, no padding steps) or "auto" (per backend: vmap on CPU, lanes on
  # accelerators; see fedqs_jax/engine.py).
  config.engine.client_mode = "auto"
  config.engine.round_mode = "scan"
  config.engine.local_loop = "while"  # or "scan" (static step count, can be unrolled)
  config.engine.local_unroll = 1  # scan unroll factor; >= the step count unrolls fully
  config.engine.lanes = 0  # client_mode="lanes": lanes per device (0: sized from the data)
  config.engine.eval_every = 10
  config.engine.memory_limit_gb = 0.0  # device memory the run may use (0: the device's)
  config.engine.checkpoint_every = 0  # chunks between checkpoints (0: none); see --resume

  # Sweeps: comma-separated values per dynamic hyperparameter, namespaced by section, e.g.
  # --config.sweep.local.lr=0.01,0.05,0.1 --config.sweep.fedbuff.beta=0,0.5; the grid is
  # their product, times the seeds, run as one program per algorithm.
  config.sweep = ml_collections.ConfigDict()
  for name in algorithms.dynamic_names():
    section, field = name.split(".")
    config.sweep[section] = config.sweep.get(section, ml_collections.ConfigDict())
    config.sweep[section][field] = ""

  # One section per algorithm (shared by FedQS-SGD and -Avg), with the defaults of its
  # spec (fedqs_jax/algorithms/<name>.py): static options and dynamic hyperparameters.
  for section, fields in algorithms.section_defaults().items():
    config[section] = ml_collections.ConfigDict(fields)
  return config

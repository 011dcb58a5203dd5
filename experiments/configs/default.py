"""The default comparison: FedAvg, FedSGD, FedBuff and FedAsync on one schedule.

Digits (scikit-learn's bundled 8x8 handwritten digits), N = 100 clients,
HeteroDiri Dirichlet 0.1, latencies drawn from 1..50 (speed ratio 1:50),
semi-asynchronous aggregation of K = 10 arrivals, an MLP.

  python -m experiments.main --workdir=runs/default

Every field can be overridden on the command line, e.g.
`--config.schedule.num_rounds=100 --config.algorithms=fedavg,fedbuff`.
"""

import ml_collections

from fedqs_jax.algorithms import fedqs

# Dynamic hyperparameters a sweep can vary (one compiled program per algorithm).
SWEEPABLE = (
  "lr", "momentum", "clip",  # local training
  "server_lr", "beta", "server_momentum",  # fedsgd / fedbuff / fedqs
  "alpha", "staleness_a", "staleness_b",  # fedasync
  *[name for name in fedqs.DEFAULT_HPARAMS if name != "server_lr"],
)  # fmt: skip


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

  config.model = ml_collections.ConfigDict()
  config.model.name = "mlp"
  config.model.hidden = (64,)
  config.model.channels = (16, 32)

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
  config.engine.client_mode = "vmap"
  config.engine.round_mode = "scan"
  config.engine.local_loop = "while"  # or "scan" (static step count, can be unrolled)
  config.engine.local_unroll = 1  # scan unroll factor; >= the step count unrolls fully
  config.engine.eval_every = 10
  config.engine.memory_limit_gb = 0.0  # device memory the run may use (0: the device's)
  config.engine.checkpoint_every = 0  # chunks between checkpoints (0: none); see --resume

  # Sweeps: comma-separated values per hyperparameter, e.g. --config.sweep.lr=0.01,0.05,0.1;
  # the grid is their product, times the seeds, run as one program per algorithm.
  config.sweep = ml_collections.ConfigDict({name: "" for name in SWEEPABLE})

  config.fedsgd = ml_collections.ConfigDict(dict(server_lr=1.0))
  config.gen_async_sgd = ml_collections.ConfigDict(dict(server_lr=1.0))  # w += lr/(n p_I) Delta
  config.fedbuff = ml_collections.ConfigDict(dict(server_lr=1.0, beta=0.5, server_momentum=0.0))
  config.fedqs = ml_collections.ConfigDict(
    dict(
      similarity="cosine",  # cosine | cosine_layerwise_minmax | euclidean | manhattan
      momentum=True,  # Mod 2 momentum adaptation (off: m_i = 0)
      feedback=True,  # Mod 3 feedback boost (off: base weights only)
      adaptive_lr=True,  # Mod 2 learning-rate steps (off: eta_i = local.lr)
      base_weights="data_size",  # data_size | uniform
      feedback_weight="reference",  # reference | paper
      a=0.002,
      m0=0.1,
      k=2.0,
      m_cap=0.4,
      phi=0.1,
      f_max=9.0,
      g_max=2.0,
      lr_min=1e-3,
      lr_max=0.2,
      spread_threshold=30.0,
      server_lr=1.0,
    )
  )
  config.fedasync = ml_collections.ConfigDict(
    dict(alpha=0.6, staleness="polynomial", poly_a=0.5, hinge_a=10.0, hinge_b=4.0)
  )
  return config

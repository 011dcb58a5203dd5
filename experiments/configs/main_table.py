"""FedQS's main table on every task: the paper's six methods and six more, one schedule.

The paper's six, FedAvg, M-step, FedQS-Avg (model aggregation) and FedSGD, WKAFL,
FedQS-SGD (update aggregation), then SAFA, FedAT, FedAC, FedBuff, CA2FL and FADAS, all
trained on ONE shared semi-asynchronous schedule per seed (a run builds one schedule per
seed and every algorithm trains on it: paired comparisons), 3 seeds, 20% of each
client's data held out as validation data (FedQS's SBC check needs it; every method
trains without it, so all see the same training data). Each task's settings are its
paper config's (`fedqs_digits.py`, `fedqs_adult.py`, `fedqs_shakespeare.py`,
`fedqs_cifar10.py`), changed only where a variant says so. Every algorithm runs with the
defaults of its spec (`fedqs_jax/algorithms/<name>.py`, e.g. `fedbuff.beta`,
`wkafl.cb1`, `fedac.server_lr`): nothing was tuned.

  python -m experiments.main --config=experiments/configs/main_table.py:TASK \
      --workdir=runs/main_table_TASK
  python -m experiments.plot --workdir=runs/main_table_TASK    # more plots

TASK is one of digits, adult_gender, adult_ethnicity, shakespeare_cpu (all CPU-sized)
and cifar10 (accelerator work). The table is the one the run prints at the end (and
summary.csv per seed): final accuracy = mean of the last 10 evaluations, mean +- std
(population) over the 3 seeds; best accuracy; rounds and simulated time to the target,
averaged over the seeds that reached it (how many in parentheses); oscillation = std of
the accuracy over the last 20% of evaluations, in points. accuracy.png holds the curves.
Each variant's function below documents its observed table (2 CPU cores shared with other
jobs; the algorithms as of commit 3913207).

The paper's orderings (FedQS-SGD above WKAFL, FedQS-Avg above M-step), as observed:

  digits           both hold, by far more than the seed spread: final accuracy
                   FedQS-SGD 90.97 vs WKAFL 86.04 (+4.8..+5.1 per seed), FedQS-Avg 75.20 vs
                   M-step 63.63 (+11.1..+12.2 per seed); 80% in 77 vs 110 rounds (88 vs
                   122 time units), FedQS-Avg in 350 rounds (2 of 3 seeds) vs M-step never.
  adult_gender     FedQS-SGD > WKAFL holds (83.04 vs 81.95, +0.8..+1.6 per seed); FedQS-Avg
                   vs M-step does not (82.92 vs 83.13, per seed -0.74, +0.03, +0.09: a tie).
  adult_ethnicity  FedQS-SGD > WKAFL holds (83.52 vs 82.50, +0.6..+1.6 per seed); FedQS-Avg
                   vs M-step is a tie (83.10 vs 83.07, per seed +0.19, +0.08, -0.19).
                   On Adult every method reaches 80% within 5-20 rounds (the first
                   evaluations), so rounds and time to target separate little: WKAFL gets
                   there one evaluation (5 rounds) after FedQS-SGD on 1 and 2 of 3 seeds.
  shakespeare_cpu  both hold: FedQS-SGD 31.42 vs WKAFL 24.43 (+6.2..+8.3 per seed), 25% in 27
                   vs 36 rounds; FedQS-Avg 27.28 vs M-step 26.57 (+0.3..+1.0 per seed), 25%
                   in 75 vs 84 rounds.
"""

import ml_collections

from experiments.configs import fedqs_adult, fedqs_cifar10, fedqs_digits, fedqs_shakespeare

# The paper's six (its main table), then the other baselines.
PAPER_METHODS = ("fedavg", "m_step", "fedqs_avg", "fedsgd", "wkafl", "fedqs_sgd")
OTHER_METHODS = ("safa", "fedat", "fedac", "fedbuff", "ca2fl", "fadas")
METHODS = PAPER_METHODS + OTHER_METHODS


def digits() -> ml_collections.ConfigDict:
  """`:digits`: scikit-learn's digits as `fedqs_digits.py` (N = 100, Dirichlet 0.1, 1:50,
  K = 10, 400 rounds, 2 epochs of batch 50 at lr 0.1), evaluated every 10 rounds, 80%.

    python -m experiments.main --config=experiments/configs/main_table.py:digits \
        --workdir=runs/main_table_digits

  Observed: 1 min 14 s wall at load average ~1, 3 min 05 s at ~6 (mostly compilation),
  0.9 GB peak.

    algorithm           final acc  best acc    rounds to 80%      time to 80% oscillation
    -------------------------------------------------------------------------------------
    fedavg          69.05 +- 2.59     73.54            never            never        3.47
    m_step          63.63 +- 1.79     75.12            never            never        7.07
    fedqs_avg       75.20 +- 2.22     82.17        350 (2/3)        376 (2/3)        4.24
    fedsgd          90.90 +- 0.26     92.01         77 (3/3)         88 (3/3)        0.59
    wkafl           86.04 +- 0.46     87.19        110 (3/3)        122 (3/3)        0.57
    fedqs_sgd       90.97 +- 0.37     92.01         77 (3/3)         88 (3/3)        0.61
    safa            61.36 +- 3.72     67.04            never            never        2.83
    fedat           18.47 +- 1.08     35.65            never            never        7.95
    fedac           50.21 +- 7.27     79.02        125 (2/3)        138 (2/3)        6.76
    fedbuff         87.75 +- 0.25     88.30        140 (3/3)        152 (3/3)        0.35
    ca2fl           75.65 +- 2.51     87.65         60 (3/3)         71 (3/3)        4.29
    fadas           87.70 +- 1.71     89.14        123 (3/3)        136 (3/3)        1.04

  The paper's orderings hold (FedQS-SGD > WKAFL, FedQS-Avg > M-step, in final accuracy and
  rounds/time to 80%; the paper's CV task is CIFAR-10, not run here). FedQS-SGD is level
  with FedSGD (90.97 vs 90.90). With their default hyperparameters FedAT collapses when
  its cross-tier weights take over (identical to FedAvg for its 30 warm-up rounds, then
  9.7% at round 40 on seed 0), and FedAC and CA2FL oscillate (best 79.0 / 87.7, final
  50.2 / 75.7).
  """
  return fedqs_digits.get_config()


def _adult(partition: str) -> ml_collections.ConfigDict:
  config = fedqs_adult.get_config(partition)
  # 75% (fedqs_adult's target) is below the majority class (75.4% of the test rows earn
  # <= 50K): every method "reaches" it at its first evaluation.
  config.target_accuracy = 0.8
  # Adult converges within ~50 rounds: 200 rounds, evaluated every 5, fit the time budget.
  config.schedule.num_rounds = 200
  config.engine.eval_every = 5
  return config


def adult_gender() -> ml_collections.ConfigDict:
  """`:adult_gender`: real UCI Adult split by Gender as `fedqs_adult.py` (N = 100, the
  FCN, 1:50, K = 10, 2 epochs of batch 50 at lr 0.1), 200 rounds evaluated every 5, 80%.

    python -m experiments.main --config=experiments/configs/main_table.py:adult_gender \
        --workdir=runs/main_table_adult_gender

  Observed: 2 min 51 s wall at load average ~3, 5 min 35 s at ~6; 1.1 GB peak.

    algorithm           final acc  best acc    rounds to 80%      time to 80% oscillation
    -------------------------------------------------------------------------------------
    fedavg          83.05 +- 0.01     83.76          5 (3/3)         12 (3/3)        0.58
    m_step          83.13 +- 0.09     83.75          5 (3/3)         12 (3/3)        0.50
    fedqs_avg       82.92 +- 0.29     83.81          5 (3/3)         12 (3/3)        1.18
    fedsgd          82.91 +- 0.35     83.87          5 (3/3)         12 (3/3)        0.79
    wkafl           81.95 +- 0.19     83.10          8 (3/3)         16 (3/3)        0.66
    fedqs_sgd       83.04 +- 0.40     83.87          5 (3/3)         12 (3/3)        0.56
    safa            83.50 +- 0.08     83.71         15 (3/3)         23 (3/3)        0.13
    fedat           80.93 +- 0.48     83.18          5 (3/3)         12 (3/3)        1.58
    fedac           67.56 +- 1.44     83.15          5 (3/3)         12 (3/3)        9.82
    fedbuff         83.24 +- 0.07     83.63          5 (3/3)         12 (3/3)        0.23
    ca2fl           75.84 +- 1.17     83.43          8 (3/3)         16 (3/3)        2.24
    fadas           78.91 +- 2.55     83.01         20 (3/3)         28 (3/3)        3.84

  Paper (Adult-Gender): M-step 78.20, FedQS-Avg 78.94, WKAFL 78.96, FedQS-SGD 78.74 (every
  method here is ~4 points above the paper's). FedQS-SGD > WKAFL holds (+1.09, one
  evaluation sooner to 80%); FedQS-Avg vs M-step does not (-0.21, within the spread; an
  earlier 400-round run, evaluated every 10 rounds, had 83.40 +- 0.15 vs 83.24 +- 0.02:
  the sign is noise). Most methods are within 0.3 points of FedAvg; FedAC, CA2FL and FADAS
  end below it, oscillating (FedAC below the majority class's 75.4%, CA2FL at it).
  """
  return _adult("gender")


def adult_ethnicity() -> ml_collections.ConfigDict:
  """`:adult_ethnicity`: as `adult_gender`, split by Ethnicity (one race per client).

    python -m experiments.main --config=experiments/configs/main_table.py:adult_ethnicity \
        --workdir=runs/main_table_adult_ethnicity

  Observed: 6 min 04 s and 6 min 24 s wall at load average ~4-6, 1.1 GB peak.

    algorithm           final acc  best acc    rounds to 80%      time to 80% oscillation
    -------------------------------------------------------------------------------------
    fedavg          83.02 +- 0.07     83.82          5 (3/3)         12 (3/3)        0.79
    m_step          83.07 +- 0.07     83.86          5 (3/3)         12 (3/3)        0.72
    fedqs_avg       83.10 +- 0.18     83.89          5 (3/3)         12 (3/3)        0.58
    fedsgd          83.15 +- 0.13     84.01          5 (3/3)         12 (3/3)        0.88
    wkafl           82.50 +- 0.38     83.71          8 (3/3)         16 (3/3)        0.96
    fedqs_sgd       83.52 +- 0.15     84.22          5 (3/3)         12 (3/3)        0.64
    safa            83.59 +- 0.16     83.80         15 (3/3)         23 (3/3)        0.19
    fedat           79.51 +- 1.32     83.28          5 (3/3)         12 (3/3)        4.08
    fedac           71.28 +- 1.27     83.17          8 (3/3)         16 (3/3)        5.18
    fedbuff         83.59 +- 0.06     83.89          5 (3/3)         12 (3/3)        0.31
    ca2fl           76.86 +- 1.45     83.69          7 (3/3)         14 (3/3)        4.03
    fadas           81.95 +- 0.71     83.08          5 (3/3)         12 (3/3)        1.20

  Paper (Adult-Ethnicity): M-step 78.01, FedQS-Avg 78.85, WKAFL 76.97, FedQS-SGD 79.24.
  FedQS-SGD > WKAFL holds (+1.02, one evaluation sooner to 80%); FedQS-Avg vs M-step is a
  tie (+0.03). FedQS-SGD is 0.37 above FedSGD; SAFA and FedBuff end as high, FedAT, FedAC,
  CA2FL and FADAS below FedAvg.
  """
  return _adult("ethnicity")


def shakespeare_cpu() -> ml_collections.ConfigDict:
  """`:shakespeare_cpu`: `fedqs_shakespeare.py:cpu` (N = 20 clients of two whole roles,
  20-character windows, LSTM(32), 1:10, K = 5, 160 rounds evaluated every 4, 1 epoch of
  batch 32 at lr 0.8, FedQS's lr bounds and step scaled with it), 25%.

    python -m experiments.main --config=experiments/configs/main_table.py:shakespeare_cpu \
        --workdir=runs/main_table_shakespeare_cpu

  Observed: 7 min 33 s wall at load average ~5 (30-47 s per method), 1.2 GB peak.

    algorithm           final acc  best acc    rounds to 25%      time to 25% oscillation
    -------------------------------------------------------------------------------------
    fedavg          26.77 +- 0.58     28.02         84 (3/3)         84 (3/3)        0.63
    m_step          26.57 +- 0.65     27.75         84 (3/3)         84 (3/3)        0.76
    fedqs_avg       27.28 +- 0.61     28.47         75 (3/3)         75 (3/3)        0.64
    fedsgd          30.74 +- 0.14     32.22         36 (3/3)         37 (3/3)        1.20
    wkafl           24.43 +- 0.90     27.95         36 (3/3)         37 (3/3)        0.90
    fedqs_sgd       31.42 +- 0.21     32.47         27 (3/3)         28 (3/3)        0.86
    safa            23.64 +- 0.14     25.35        148 (3/3)        146 (3/3)        1.20
    fedat           22.25 +- 0.57     24.52        140 (1/3)        138 (1/3)        1.80
    fedac           28.20 +- 0.20     29.85         81 (3/3)         81 (3/3)        1.15
    fedbuff         28.55 +- 0.26     29.63         37 (3/3)         38 (3/3)        0.65
    ca2fl           22.86 +- 0.78     27.38         72 (3/3)         72 (3/3)        2.70
    fadas            8.80 +- 2.77     20.20            never            never        2.75

  FedAvg, FedQS-Avg, FedSGD and FedQS-SGD give exactly the table documented in
  `fedqs_shakespeare.py:cpu` (same schedule, data and seeds). Paper (NLP, R = 200): M-step
  49.38, FedQS-Avg 50.43, WKAFL 50.49, FedQS-SGD 52.22. Both orderings hold: FedQS-SGD >
  WKAFL by 6.2-8.3 points per seed (WKAFL ends below FedAvg), 25% in 27 vs 36 rounds;
  FedQS-Avg > M-step by +0.78, +0.31, +1.04 (smaller than a single evaluation's ~1-point
  standard error on the 2,000 test windows, but on every seed), 25% in 75 vs 84 rounds. With
  the local lr of 0.8 and its default server lr of 1.0, FADAS ends below the 17.8% of
  predicting spaces.
  """
  return fedqs_shakespeare.get_config("cpu")


def cifar10() -> ml_collections.ConfigDict:
  """`:cifar10`: `fedqs_cifar10.py` (CIFAR-10, ResNet-18, Dirichlet 0.5, N = 100, 1:50,
  K = 10, 400 rounds, 2 epochs), 70%: accelerator work, needs the prepared TFDS data
  (`--config.data.data_dir=DIR`); not run here.

    python -m experiments.main --config=experiments/configs/main_table.py:cifar10 \
        --config.data.data_dir=DIR --workdir=runs/main_table_cifar10

  Paper (x = 0.5): FedAvg 73.71, M-step 80.49, FedQS-Avg 80.26, FedSGD 83.87, WKAFL 85.14,
  FedQS-SGD 86.11.
  """
  return fedqs_cifar10.get_config("paper")


VARIANTS = {
  "digits": digits,
  "adult_gender": adult_gender,
  "adult_ethnicity": adult_ethnicity,
  "shakespeare_cpu": shakespeare_cpu,
  "cifar10": cifar10,
}
TASKS = tuple(VARIANTS)


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  """arg: the task, one of `TASKS` (default "digits")."""
  if arg not in VARIANTS:
    raise ValueError(f"main_table.py takes one of {', '.join(TASKS)}, got {arg!r}")
  config = VARIANTS[arg]()
  config.algorithms = ",".join(METHODS)
  config.num_seeds = 3
  # FedQS's SBC check needs per-client validation data; every method trains without it.
  config.data.validation_fraction = 0.2
  return config

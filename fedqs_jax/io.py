"""Atomic result files, a result set's manifest, and the lock that gives a folder to one run.

Each file is written to a temporary sibling (`.tmp-*`) and renamed over its path:
a killed run never leaves a half-written file, and readers see the old file or the
new one, nothing in between. The files get the mode a plain `open` would give them
(0666 less the umask), not the temporary file's 0600.

A run's files are consistent as a set through `manifest.json`, written last: the
config hash and each file's sha256. The writer removes the old manifest before it
writes a new set, so a folder whose manifest is missing or does not match its
files is an unfinished or altered result set (`manifest_problem`).

`FolderLock` is an exclusive `fcntl.flock` on a lock file holding the owner's pid:
the OS releases it when the process dies, so a killed run leaves no stale lock.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import glob
import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator, Sequence
from typing import IO, Any

MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"


def umask() -> int:
  """The process's umask (read without changing it where Linux tells it)."""
  with contextlib.suppress(OSError, ValueError):
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  mask = os.umask(0o022)  # elsewhere: set and restore
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[IO]:
  """Opens a temporary sibling of `path`; renames it over `path` on success."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX, suffix=os.path.basename(path))
  try:
    os.fchmod(fd, 0o666 & ~umask())  # mkstemp's 0600 -> what open() would create
    with os.fdopen(fd, mode, newline="" if "b" not in mode else None) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def remove_temporaries(folder: str, names: Sequence[str]) -> list[str]:
  """Removes the `.tmp-*` files that `atomic_open` left in `folder` for `names` (a killed
  writer's); returns their paths. Call it only while no other process writes there."""
  removed = []
  for path in glob.glob(os.path.join(glob.escape(folder), TMP_PREFIX + "*")):
    if os.path.isfile(path) and any(path.endswith(name) for name in names):
      with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
        removed.append(path)
  return removed


def write_json(path: str, obj: Any) -> None:
  with atomic_open(path) as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=jsonable)
    f.write("\n")


def write_text(path: str, text: str) -> None:
  with atomic_open(path) as f:
    f.write(text)


def write_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
  """Writes dict rows (columns: the union of keys, in first-seen order)."""
  columns: dict[str, None] = {}
  for row in rows:
    columns.update(dict.fromkeys(row))
  with atomic_open(path) as f:
    writer = csv.DictWriter(f, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)


def jsonable(obj: Any) -> Any:
  if hasattr(obj, "tolist"):
    return obj.tolist()
  if isinstance(obj, tuple | set):
    return list(obj)
  return str(obj)


def digest(obj: Any) -> str:
  """The sha256 (hex) of `obj` as canonical JSON (sorted keys): a config's hash."""
  text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=jsonable)
  return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: str) -> str:
  sha = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      sha.update(block)
  return sha.hexdigest()


# ----------------------------------------------------------------------------- manifest


def write_manifest(folder: str, names: Sequence[str], config_hash: str) -> None:
  """Writes `folder/manifest.json` (atomically): `config_hash` and the sha256 of each of
  the files `names` in `folder`. Write it after the files it lists."""
  files = {name: file_sha256(os.path.join(folder, name)) for name in names}
  write_json(os.path.join(folder, MANIFEST), {"config_hash": config_hash, "files": files})


def remove_manifest(folder: str) -> None:
  """Removes `folder/manifest.json`: the folder's result set is being rewritten."""
  with contextlib.suppress(FileNotFoundError):
    os.unlink(os.path.join(folder, MANIFEST))


def manifest_problem(folder: str, required: Sequence[str] = ()) -> str | None:
  """Why `folder` is not a complete result set (None: it is): its manifest is missing or
  unreadable, does not list every file of `required`, or a listed file is missing or
  differs from the one the manifest records."""
  path = os.path.join(folder, MANIFEST)
  if not os.path.isfile(path):
    return (f"has no {MANIFEST}: its run did not finish writing its results (killed, still "
            "running, or written before manifests existed): rerun it")  # fmt: skip
  try:
    with open(path) as f:
      manifest = json.load(f)
    files = dict(manifest["files"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"{MANIFEST} cannot be read ({type(e).__name__}): the result set is corrupt"
  unlisted = [name for name in required if name not in files]
  if unlisted:
    return f"{MANIFEST} does not list {', '.join(unlisted)}: not a run's result set"
  for name, sha in files.items():
    file = os.path.join(folder, name)
    if not os.path.isfile(file):
      return f"{name} is missing although {MANIFEST} lists it: an incomplete result set"
    if file_sha256(file) != sha:
      return (f"{name} differs from the one {MANIFEST} records: changed after its run, or "
              "a killed run's partial result set")  # fmt: skip
  return None


# ----------------------------------------------------------------------------- lock


class Locked(Exception):
  """The folder is locked by another process (`holder`: what its lock file says)."""

  def __init__(self, path: str, holder: str):
    super().__init__(f"{path} is locked by {holder}")
    self.path, self.holder = path, holder


class FolderLock:
  """An exclusive `flock` on `path` (created if needed) for the life of this object or
  of the process, whichever ends first; the file holds "pid <pid> on <host>".

  `acquire` raises `Locked` naming the holder when another process has it. The file
  is never removed (removing a locked file would let two processes lock two files).
  """

  def __init__(self, path: str):
    self.path = path
    self._fd: int | None = None

  def acquire(self) -> FolderLock:
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise
      raise Locked(self.path, self.holder()) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    self._fd = fd
    return self

  def holder(self) -> str:
    """What the lock file says about its holder ("another process" if it says nothing
    yet: the holder is between taking the lock and writing its pid)."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
      with open(self.path) as f:
        text = f.read().strip()
      if text:
        return text
    return "another process"

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing the descriptor releases the flock
      self._fd = None

  def __enter__(self) -> FolderLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()

"""Atomic result files: write to a temporary file in the same folder, then rename.

A killed run never leaves a half-written file: readers see the old file or the
new one, nothing in between.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[IO]:
  """Opens a temporary sibling of `path`; renames it over `path` on success."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, mode, newline="" if "b" not in mode else None) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def write_json(path: str, obj: Any) -> None:
  with atomic_open(path) as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=jsonable)
    f.write("\n")


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

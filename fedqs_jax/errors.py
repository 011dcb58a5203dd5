"""The one exception type for invalid user input, and the checks that raise it."""

from __future__ import annotations

import os


class ConfigError(ValueError):
  """An invalid configuration, raised before anything is compiled.

  The message names the offending field and the allowed range, e.g.
  `schedule.buffer_size=0 is invalid: must be in [1, num_clients=100]`.
  """


def plain(value):
  """`value` as the user would write it: NumPy scalars and arrays as Python numbers and
  lists (`-4.0`, not `np.float64(-4.0)`), also inside tuples, lists and dicts."""
  if hasattr(value, "dtype") and hasattr(value, "tolist"):  # NumPy / JAX scalar or array
    return value.tolist()
  if isinstance(value, tuple | list):
    return type(value)(plain(v) for v in value)
  if isinstance(value, dict):
    return {k: plain(v) for k, v in value.items()}
  return value


def check(condition: bool, field: str, value, allowed: str) -> None:
  """Raises `ConfigError` naming `field`, `value` and the allowed range unless `condition`."""
  if not condition:
    raise ConfigError(f"{field}={plain(value)!r} is invalid: {allowed}")


def check_text_file(field: str, path: str, what: str = "text file") -> None:
  """Raises `ConfigError` unless `path` is an existing, readable UTF-8 `what` (no binary)."""
  check(os.path.isfile(path), field, path, f"must be an existing {what}")
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except OSError as e:
    raise ConfigError(f"{field}={path!r} is invalid: cannot be read ({e.strerror})") from None
  except UnicodeDecodeError as e:
    raise ConfigError(
      f"{field}={path!r} is invalid: must be a {what}, but byte {e.start} is not UTF-8 text "
      "(a binary file?)"
    ) from None
  check("\0" not in text, field, path, f"must be a {what}, but it holds NUL bytes (binary?)")

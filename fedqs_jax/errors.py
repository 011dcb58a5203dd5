"""The one exception type for invalid user input."""


class ConfigError(ValueError):
  """An invalid configuration, raised before anything is compiled.

  The message names the offending field and the allowed range, e.g.
  `schedule.buffer_size=0 is invalid: must be in [1, num_clients=100]`.
  """


def check(condition: bool, field: str, value, allowed: str) -> None:
  """Raises `ConfigError` naming `field`, `value` and the allowed range unless `condition`."""
  if not condition:
    raise ConfigError(f"{field}={value!r} is invalid: {allowed}")

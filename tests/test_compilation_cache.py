"""The persistent compilation cache: where it lives (flag > environment > default, `off`),
the refusal of a folder inside the workdir, no cache (one warning) when the folder cannot
be written, and a second process loading what the first compiled."""

import json
import os
import subprocess
import sys

import jax
import pytest
from absl import logging
from absl.testing import flagsaver
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from fedqs_jax import compilation_cache as cc
from fedqs_jax.errors import ConfigError

_JAX_OPTIONS = (
  "jax_compilation_cache_dir",
  "jax_enable_compilation_cache",
  "jax_persistent_cache_min_compile_time_secs",
  "jax_persistent_cache_min_entry_size_bytes",
)


@pytest.fixture(autouse=True)
def jax_options(monkeypatch):
  """Every test starts without the environment variable and leaves JAX's cache options (of
  this test process) as they were."""
  monkeypatch.delenv(cc.ENV, raising=False)
  saved = {name: jax.config.values[name] for name in _JAX_OPTIONS}
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  jax_cache.reset_cache()


def test_flag_wins_over_environment_over_default(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  default = str(tmp_path / "xdg" / "fedqs_jax" / "xla")
  assert cc.resolve(None) == (default, "default")
  assert cc.resolve("") == (default, "default")
  monkeypatch.setenv(cc.ENV, str(tmp_path / "env"))
  assert cc.resolve(None) == (str(tmp_path / "env"), f"${cc.ENV}")
  assert cc.resolve(str(tmp_path / "flag")) == (str(tmp_path / "flag"), "--compilation_cache")
  assert cc.resolve("off") == (None, "--compilation_cache")  # the flag turns a set env off
  for off in ("off", "0", "OFF"):
    monkeypatch.setenv(cc.ENV, off)
    assert cc.resolve(None) == (None, f"${cc.ENV}")
  assert cc.resolve(str(tmp_path / "flag"))[0] == str(tmp_path / "flag")  # and on again


def test_default_without_xdg_is_under_home(tmp_path, monkeypatch):
  monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  assert cc.resolve(None) == (str(tmp_path / ".cache" / "fedqs_jax" / "xla"), "default")


def test_relative_folder_is_made_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cc.resolve("cache")[0] == str(tmp_path / "cache")


def test_enable_configures_jax(tmp_path):
  folder = str(tmp_path / "cache")
  assert cc.enable(folder) == folder
  assert os.path.isdir(folder)
  assert jax.config.values["jax_compilation_cache_dir"] == folder
  assert jax.config.values["jax_enable_compilation_cache"] is True
  assert jax.config.values["jax_persistent_cache_min_compile_time_secs"] == 0
  assert cc.enable("off") is None
  assert jax.config.values["jax_enable_compilation_cache"] is False


def test_enable_from_flags_reads_the_flag(tmp_path, monkeypatch):
  monkeypatch.setenv(cc.ENV, str(tmp_path / "env"))
  with flagsaver.flagsaver(compilation_cache=str(tmp_path / "flag")):
    assert cc.enable_from_flags() == str(tmp_path / "flag")
    with pytest.raises(ConfigError, match=r"^compilation_cache=.* inside --workdir="):
      cc.enable_from_flags(workdir=str(tmp_path))
  with flagsaver.flagsaver(compilation_cache=None):
    assert cc.enable_from_flags() == str(tmp_path / "env")


@pytest.mark.parametrize("where", ["same", "inside", "deep"])
def test_folder_inside_the_workdir_is_refused(tmp_path, monkeypatch, where):
  workdir = tmp_path / "run"
  folder = {"same": workdir, "inside": workdir / "xla", "deep": workdir / "a" / ".." / "b"}[where]
  with pytest.raises(ConfigError) as e:
    cc.enable(str(folder), workdir=str(workdir))
  message = str(e.value)
  assert message.startswith("compilation_cache=") and "--workdir=" in message
  assert "\n" not in message and "--compilation_cache=off" in message
  assert not folder.exists()  # refused before anything is created
  monkeypatch.setenv(cc.ENV, str(folder))  # from the environment: the message says so
  with pytest.raises(ConfigError, match=rf"\(from \${cc.ENV}\)"):
    cc.enable(None, workdir=str(workdir))


def test_folder_beside_or_above_the_workdir_is_accepted(tmp_path):
  workdir = tmp_path / "run"
  for folder in (tmp_path / "run-cache", tmp_path / "runs", tmp_path):  # "run" is a prefix
    cc.check_outside_workdir(str(folder), str(workdir))
  cc.check_outside_workdir(None, str(workdir))
  assert cc.enable(str(tmp_path / "run-cache"), workdir=str(workdir)) == str(tmp_path / "run-cache")


def test_unwritable_folder_is_one_warning_and_no_cache(tmp_path, monkeypatch):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  folder = str(blocker / "xla")  # cannot be created (even by root): its parent is a file
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))
  assert cc.enable(folder) is None
  assert cc.enable(folder) is None
  assert len(warnings) == 1, warnings  # once per folder
  assert folder in warnings[0] and "without a cache" in warnings[0]
  assert jax.config.values["jax_enable_compilation_cache"] is False


_CHILD = """
import json, sys
from fedqs_jax import compilation_cache
folder = compilation_cache.enable()
import jax, jax.numpy as jnp
hits = []
jax.monitoring.register_event_listener(
  lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None
)
f = jax.jit(lambda x: jnp.tanh(x @ x.T) + jnp.float32(sys.argv[1]))
f(jnp.ones((16, 16))).block_until_ready()
print(json.dumps({"folder": folder, "hits": len(hits)}))
"""


def test_second_process_loads_the_first_ones_program(tmp_path):
  cache = tmp_path / "cache"

  def child(setting: str, constant: str = "1.5") -> dict:
    env = {**os.environ, cc.ENV: setting, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    out = subprocess.run(
      [sys.executable, "-c", _CHILD, constant], env=env, capture_output=True, text=True,
      timeout=120, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])

  def entries() -> set[str]:
    return {p.name for p in cache.iterdir() if not p.name.startswith(".")}

  cold = child(str(cache))
  assert cold == {"folder": str(cache), "hits": 0}
  written = entries()  # f and the eager ops' programs, each compiled in well under 1 s
  assert len(written) >= 2
  warm = child(str(cache))
  assert warm == {"folder": str(cache), "hits": len(written)}  # every one loaded
  assert entries() == written  # not compiled and written again
  other = child(str(cache), "2.5")  # another f: one miss, one more entry
  assert other["hits"] == len(written) - 1 and len(entries()) == len(written) + 1
  off = child("off")
  assert off == {"folder": None, "hits": 0}
  assert not (tmp_path / "xdg").exists()  # off: nothing written, not even the default


def test_bad_input_with_the_cache_on_is_still_one_line(tmp_path):
  env = {**os.environ, cc.ENV: str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
    [sys.executable, "-m", "experiments.main", f"--workdir={tmp_path / 'w'}",
     "--config.local.lr=-1"],
    cwd=root, env=env, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == ["error: local.lr=-1.0 is invalid: must be > 0"]
  assert (tmp_path / "cache").is_dir()  # the cache was on

"""The grid axis sharded over 8 forced host CPU devices gives the unsharded results."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fedqs_jax import data as data_lib
from fedqs_jax import program, run
from tests.common import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {
  "sweep.local.lr": "0.05,0.1,0.2",
  "algorithms": "fedqs_sgd",
  "data.validation_fraction": 0.2,
}

SCRIPT = """
import json, sys
import jax
jax.config.update("jax_disable_most_optimizations", True)
from fedqs_jax import data as data_lib, program, run
from tests.common import tiny_config
config = tiny_config(**json.loads(sys.argv[1]))
data = data_lib.load(config.data, config.data.seed)
out = run.train(config, "fedqs_sgd", data, program.make_schedule(config))
print(json.dumps({"devices": out["devices"], "count": jax.device_count(),
                  "test_loss": out["test_loss"].tolist(),
                  "client_steps": out["client_steps"].tolist()}))
"""


@pytest.fixture(scope="module")
def alone():
  config = tiny_config(**OVERRIDES)
  data = data_lib.load(config.data, config.data.seed)
  return run.train(config, "fedqs_sgd", data, program.make_schedule(config))


@pytest.mark.parametrize("client_mode", ["vmap", "lanes"])
def test_grid_sharded_over_8_devices_equals_unsharded(alone, client_mode):
  """Lanes pack each device's points apart (no lane crosses devices): lockstep's numbers."""
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=ROOT,
  )
  proc = subprocess.run(
    [sys.executable, "-c", SCRIPT, json.dumps({**OVERRIDES, "engine.client_mode": client_mode})],
    cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  sharded = json.loads(proc.stdout.strip().splitlines()[-1])
  assert sharded["count"] == 8 and sharded["devices"] == 8  # 3 points padded to 8, all used
  assert alone["devices"] == 1
  np.testing.assert_allclose(np.array(sharded["test_loss"]), alone["test_loss"], rtol=1e-5)
  np.testing.assert_array_equal(np.array(sharded["client_steps"]), alone["client_steps"])

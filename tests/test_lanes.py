"""Work-balanced local training (`client_mode="lanes"`): a valid packing, lockstep's numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedqs_jax import data as data_lib
from fedqs_jax import engine, program, run
from tests.common import tiny_config


def walk(offset, following, first, lengths):
  """Each lane's tasks in order, following the plan's links."""
  lanes = []
  for t in first:
    lane = []
    while t >= 0:
      lane.append(int(t))
      t = following[t]
    lanes.append(lane)
  return lanes


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("num_lanes", [1, 3, 8])
def test_pack_lanes_runs_every_task_once_back_to_back_within_the_list_scheduling_bound(
  seed, num_lanes
):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(0, 40, size=25) * (rng.random(25) < 0.8)  # skewed, some empty
  offset, following, first, span = map(
    np.asarray, jax.jit(engine.pack_lanes, static_argnums=1)(jnp.asarray(lengths), num_lanes)
  )
  lanes = walk(offset, following, first, lengths)
  assert len(lanes) == num_lanes
  tasks = sorted(t for lane in lanes for t in lane)
  assert tasks == sorted(np.flatnonzero(lengths > 0).tolist())  # each real task once
  ends = []
  for lane in lanes:
    clock = 0
    for t in lane:  # back to back from step 0
      assert offset[t] == clock
      clock += lengths[t]
    ends.append(clock)
  assert span == max(ends)
  total, longest = lengths.sum(), lengths.max()
  assert max(longest, -(-total // num_lanes)) <= span  # no packing beats these
  assert span <= total / num_lanes + longest * (1 - 1 / num_lanes)  # Graham's bound


def test_num_lanes_keeps_a_lane_about_one_longest_task_long():
  c = tiny_config()
  data = data_lib.load(c.data, c.data.seed)
  eng = program.build_program(c, "fedavg", data, num_slots=data.num_clients).engine
  steps = np.asarray(eng.num_steps(np.asarray(data.client_count)))
  assert eng.num_lanes(40) == round(40 * steps.mean() / steps.max())
  assert eng.num_lanes(1) == 1
  c.engine.lanes = 3
  eng = program.build_program(c, "fedavg", data, num_slots=data.num_clients).engine
  assert eng.num_lanes(40) == 3 and eng.num_lanes(2) == 2


# One algorithm per kind of `LocalTask` and client state: FedQS reads and writes its
# client rows per task, M-step starts from a per-task model, FedAC corrects every
# gradient, FedProx adds a proximal term.
@pytest.mark.parametrize("name", ["fedqs_sgd", "m_step", "fedac", "fedprox"])
def test_lanes_train_a_grid_exactly_like_lockstep(name):
  out = {}
  for mode in ("vmap", "lanes"):
    c = tiny_config(
      **{
        "engine.client_mode": mode,
        "num_seeds": 2,
        "sweep.local.lr": "0.05,0.1",
        "schedule.num_rounds": 20,
        "data.validation_fraction": 0.2,  # FedQS's class accuracies
      }
    )
    data = data_lib.load(c.data, c.data.seed)
    out[mode] = run.train(c, name, data, program.make_schedule(c))
  lock, lanes = out["vmap"], out["lanes"]
  assert lock["test_loss"].shape[0] == 4  # 2 points x 2 seeds packed together
  np.testing.assert_array_equal(lanes["client_steps"], lock["client_steps"])
  for key in ("test_loss", "test_accuracy", "train_loss"):
    np.testing.assert_allclose(lanes[key], lock[key], rtol=1e-5, atol=1e-6)
  assert not np.allclose(lock["test_loss"][0], lock["test_loss"][1])  # the points differ


def test_auto_client_mode_is_lockstep_on_cpu_and_lanes_on_accelerators():
  c = tiny_config()
  assert c.engine.client_mode == "auto"  # the default
  data = data_lib.load(c.data, c.data.seed)
  eng = program.build_program(c, "fedavg", data, num_slots=data.num_clients).engine
  assert eng.execution.client_mode == engine.auto_client_mode(jax.default_backend())
  assert engine.auto_client_mode("cpu") == "vmap"
  assert engine.auto_client_mode("gpu") == engine.auto_client_mode("tpu") == "lanes"

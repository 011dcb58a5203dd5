"""FedQS: the Mod 2 classification table, Mod 3 weights, the local optimiser, and reductions."""

import csv
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedqs_jax import data as data_lib
from fedqs_jax import engine, program, run
from fedqs_jax.algorithms import Broadcast, fedqs
from tests.common import tiny_config

H = {k: jnp.float32(v) for k, v in fedqs.DEFAULT_HPARAMS.items()}


def classify(**kw):
  args = dict(
    theta=10.0, f=1.0, f_bar=1.0, theta_bar=10.0, has_prev=True, lr=0.1, momentum=0.05,
    spread=0.0, hparams=H,
  )  # fmt: skip
  args.update(kw)
  return jax.tree.map(np.asarray, fedqs.classify(**{k: jnp.asarray(v) if k != "hparams" else v
                                                    for k, v in args.items()}))  # fmt: skip


# (f, theta) with f_bar = 1.2, theta_bar = 20: F = min(1.2 / f, 9), G = theta / 20.
@pytest.mark.parametrize(
  "f,theta,spread,kind,lr,momentum,feedback",
  [
    (2.0, 30.0, 0.0, "fbc", 0.1, 0.0, True),
    (2.0, 10.0, 0.0, "fuc", 0.1 - 0.002 * 0.6, 0.1 + min(2 * (2.0 - 1), 0.4), False),
    (2.0, 18.0, 0.0, "fuc", 0.1 - 0.002 * 0.6, 0.1 + 2 * (20 / 18 - 1), False),
    (0.5, 10.0, 0.0, "suc", 0.1 + 0.002 * 2.4, 0.1 + 0.4, False),
    (0.5, 30.0, 12.0, "sbc", 0.1 + 0.002 * 2.4, 0.1, False),  # straggler: spread < 30
    (0.5, 30.0, 45.0, "sbc", 0.1 + 0.002 * 2.4, 0.0, True),  # distribution shift
    (0.01, 10.0, 0.0, "suc", 0.1 + 0.002 * 9.0, 0.5, False),  # F capped at F_max = 9
    (1.2, 20.0, 0.0, "suc", 0.1 + 0.002 * 1.0, 0.1, False),  # ties: f = f_bar, theta = theta_bar
  ],
)
def test_classification_table(f, theta, spread, kind, lr, momentum, feedback):
  c = classify(f=f, theta=theta, f_bar=1.2, theta_bar=20.0, spread=spread)
  assert c.classified
  assert fedqs.TYPES[int(c.kind)] == kind
  np.testing.assert_allclose(c.lr, lr, rtol=1e-5)
  np.testing.assert_allclose(c.momentum, momentum, rtol=1e-5, atol=1e-7)
  assert bool(c.feedback) == feedback
  assert bool(c.straggler) == (kind == "sbc" and spread < 30)
  np.testing.assert_allclose(c.g, theta / 20.0, rtol=1e-6)


@pytest.mark.parametrize(
  "kw",
  [
    dict(f=0.0),  # never aggregated yet
    dict(has_prev=False),  # no previous local update
    dict(theta_bar=0.0),  # theta_bar not defined yet
    dict(f_bar=0.0),  # f_bar not defined yet
  ],
)
def test_unclassified_clients_keep_their_lr_and_momentum(kw):
  c = classify(**{"theta": 30.0, "f": 2.0, **kw})
  assert not c.classified and not c.feedback and not c.straggler
  np.testing.assert_allclose(c.lr, 0.1)
  np.testing.assert_allclose(c.momentum, 0.05)


def test_zero_theta_is_aligned_with_capped_momentum():
  c = classify(theta=0.0, f=0.5, theta_bar=20.0)
  assert fedqs.TYPES[int(c.kind)] == "suc"
  assert float(c.g) == 0.0
  np.testing.assert_allclose(c.momentum, 0.1 + 0.4, rtol=1e-6)
  assert np.isfinite(c.lr) and np.isfinite(c.momentum)


def test_lr_is_clipped_to_its_bounds():
  c = classify(lr=0.2, f=0.5, theta=10.0)  # SUC raises lr past lr_max
  np.testing.assert_allclose(c.lr, 0.2)
  c = classify(lr=0.001, f=2.0, theta=10.0)  # FUC lowers lr past lr_min
  np.testing.assert_allclose(c.lr, 1e-3)
  c = classify(lr=0.5, f=2.0, theta=30.0)  # FBC keeps lr, but it is clipped too
  np.testing.assert_allclose(c.lr, 0.2)


def test_ablation_switches_in_classification():
  off = jax.tree.map(
    np.asarray,
    fedqs.classify(
      theta=jnp.float32(10.0), f=jnp.float32(0.5), f_bar=jnp.float32(1.2),
      theta_bar=jnp.float32(20.0), has_prev=jnp.bool_(True), lr=jnp.float32(0.1),
      momentum=jnp.float32(0.3), spread=jnp.float32(0.0), hparams=H,
      use_momentum=False, adaptive_lr=False,
    ),
  )  # fmt: skip
  assert off.classified
  assert float(off.momentum) == 0.0
  np.testing.assert_allclose(off.lr, 0.1)


def test_class_spread():
  acc = jnp.array([0.9, 0.5, 0.8, 0.0])
  counts = jnp.array([20.0, 5.0, 12.0, 0.0])  # class 1 halved (< 10 samples), class 3 absent
  np.testing.assert_allclose(fedqs.class_spread(acc, counts), 90.0 - 25.0, rtol=1e-6)
  assert float(fedqs.class_spread(acc, jnp.zeros(4))) == 0.0


def test_thresholds():
  freq = jnp.array([0.0, 2.0, 4.0, 6.0])  # mean 3: f = [0, 2/3, 4/3, 2]
  theta = jnp.array([0.0, 10.0, 0.0, 30.0])
  f_bar, theta_bar = fedqs.thresholds(freq, theta)
  np.testing.assert_allclose(f_bar, (2 / 3 + 4 / 3 + 2) / 3, rtol=1e-6)
  np.testing.assert_allclose(theta_bar, 20.0, rtol=1e-6)
  np.testing.assert_array_equal(fedqs.thresholds(jnp.zeros(4), jnp.zeros(4)), [0.0, 0.0])


def weights(**kw):
  args = dict(
    num_examples=jnp.array([10.0, 30.0, 0.0, 60.0]),
    feedback=jnp.array([False, True, False, False]),
    g=jnp.array([0.5, 3.0, 1.0, 1.0]),
    freq_share=jnp.array([0.1, 0.05, 0.2, 0.3]),
    hparams=H,
  )
  args.update(kw)
  return np.asarray(fedqs.aggregation_weights(**args))


def test_mod3_weights_without_feedback_are_data_sizes():
  p = weights(feedback=jnp.zeros(4, bool))
  np.testing.assert_allclose(p, [0.1, 0.3, 0.0, 0.6], rtol=1e-6)
  np.testing.assert_allclose(weights(use_feedback=False), [0.1, 0.3, 0.0, 0.6], rtol=1e-6)
  np.testing.assert_allclose(
    weights(feedback=jnp.zeros(4, bool), base_weights="uniform"), [0.25] * 4, rtol=1e-6
  )


def test_mod3_feedback_boost_is_the_reference_formula():
  p = weights()
  boost = (math.e / 2) ** (0.1 - 0.05) * (1 + min(3.0, 2.0) ** 2)
  raw = np.array([0.1, 0.3 * boost, 0.0, 0.6])
  np.testing.assert_allclose(p, raw / raw.sum(), rtol=1e-5)
  assert p.sum() == pytest.approx(1.0, rel=1e-6) and np.all(p >= 0)
  paper = weights(feedback_weight="paper")
  boost = math.exp(0.1 - 0.05) / (0.2 - 0.05) * (1 + 3.0) / 8
  raw = np.array([0.1, 0.3 * boost, 0.0, 0.6])
  np.testing.assert_allclose(paper, raw / raw.sum(), rtol=1e-5)


def test_mod3_all_empty_arrivals_give_zero_weights():
  p = weights(num_examples=jnp.zeros(4))
  assert np.all(p == 0) and np.all(np.isfinite(p))


def test_local_optimizer_matches_the_papers_unrolled_momentum_formula():
  # Quadratic f(w) = 0.5 w^T A w with A diagonal; gradients g_e = A w_e.
  a = jnp.array([1.0, 3.0, 0.5])
  lr, m = 0.1, 0.7
  opt = engine.local_optimizer(lr, m, clip=1e6)
  w = jnp.array([1.0, -2.0, 0.5])
  state = opt.init(w)
  ws, grads = [w], []
  for _ in range(6):
    g = a * ws[-1]
    grads.append(g)
    updates, state = opt.update(g, state, ws[-1])
    ws.append(optax.apply_updates(ws[-1], updates))
  # w_e = w_(e-1) - lr [sum_(r=1..e) m^r g_(e-r) + g_e], e counted from 0.
  for e in range(6):
    expected = ws[e] - lr * (grads[e] + sum(m**r * grads[e - r] for r in range(1, e + 1)))
    np.testing.assert_allclose(ws[e + 1], expected, rtol=1e-5)


def _train(config, name):
  data = data_lib.load(config.data, config.data.seed)
  return run.train(config, name, data, program.make_schedule(config))


ALL_OFF = {
  "fedqs.momentum": False,
  "fedqs.feedback": False,
  "fedqs.adaptive_lr": False,
  "fedqs.base_weights": "data_size",
}


@pytest.mark.parametrize("variant,baseline", [("sgd", "fedsgd"), ("avg", "fedavg")])
def test_fedqs_with_every_mod_off_is_its_baseline(variant, baseline):
  config = tiny_config(**ALL_OFF, **{"data.validation_fraction": 0.2})
  ours = _train(config, f"fedqs_{variant}")
  theirs = _train(config, baseline)
  np.testing.assert_allclose(ours["test_loss"], theirs["test_loss"], rtol=2e-4)
  np.testing.assert_allclose(ours["test_accuracy"], theirs["test_accuracy"], atol=1e-6)
  np.testing.assert_array_equal(ours["client_steps"], theirs["client_steps"])


def test_fedqs_type_counts_add_up():
  config = tiny_config(**{"data.validation_fraction": 0.2, "schedule.num_rounds": 40})
  out = _train(config, "fedqs_sgd")
  types = sum(out[f"dispatch_{t}"] for t in fedqs.TYPES)
  np.testing.assert_array_equal(types, out["dispatch_classified"])
  assert np.all(out["dispatch_classified"] <= out["dispatched"])
  np.testing.assert_array_equal(
    out["dispatch_sbc_straggler"] + out["dispatch_sbc_shift"], out["dispatch_sbc"]
  )
  assert out["dispatch_classified"].sum() > 0  # classification does happen
  lr_mean = out["dispatch_lr_sum"] / np.maximum(out["dispatched"], 1)
  assert np.all((lr_mean >= 1e-3 - 1e-7) & (lr_mean <= 0.2 + 1e-7))
  assert np.all(np.isfinite(out["test_loss"]))


def test_fedqs_runs_through_the_cli_and_logs_types(tmp_path):
  from tests.test_cli import SHRINK, cli

  workdir = tmp_path / "fedqs"
  proc = cli(
    "--config=experiments/configs/fedqs_digits.py",
    f"--workdir={workdir}",
    "--config.algorithms=fedqs_sgd,fedqs_avg",
    "--config.num_seeds=2",
    "--config.local.batch_size=32",
    *SHRINK,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir / "metrics.csv") as f:
    rows = list(csv.DictReader(f))
  assert {r["algorithm"] for r in rows} == {"fedqs_sgd", "fedqs_avg"}
  assert len(rows) == 2 * 2 * 4
  for r in rows:
    types = sum(float(r[f"dispatch_{t}"]) for t in fedqs.TYPES)
    assert types == float(r["dispatch_classified"]) <= float(r["dispatched"])
    assert float(r["dispatch_sbc_straggler"]) + float(r["dispatch_sbc_shift"]) == float(
      r["dispatch_sbc"]
    )
    assert 0 <= float(r["feedback_uploads"]) <= 4  # K = 4
  assert sum(float(r["dispatch_classified"]) for r in rows) > 0


def test_mod1_measures_the_angle_between_the_last_update_and_the_last_server_step():
  """Mod 1: theta is the angle between the client's previous update and L_g = w^v - w^(v-1)."""
  algo = fedqs.fedqs("sgd")
  rng = np.random.default_rng(0)
  w = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
  step = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
  hparams = {**H, "lr": jnp.float32(0.1), "momentum": jnp.float32(0.0)}
  server, clients = algo.init(w, 2, hparams)
  row = jax.tree.map(lambda x: x[0], clients)._replace(prev_update=step, has_prev=jnp.bool_(True))
  probe = lambda p: (jnp.ones(3), jnp.full(3, 20.0))  # noqa: E731

  def theta(prev_params):
    b = Broadcast(w, prev_params, jnp.int32(0), jnp.int32(1), jnp.float32(5), probe)
    return float(algo.client_begin(row, server, b, hparams)[1].theta)

  moved_along = jax.tree.map(jnp.subtract, w, step)  # the server moved by +step: L_g = step
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
    fedqs.pseudo_global_gradient(w, moved_along),
    step,
  )
  assert theta(moved_along) == pytest.approx(0.0, abs=0.1)
  assert theta(jax.tree.map(jnp.add, w, step)) == pytest.approx(180.0, abs=0.1)

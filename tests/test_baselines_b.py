"""M-step, WKAFL, SAFA and FedAT: numpy transcriptions of each formula, reductions (to
model aggregation, to FedAvg), FedAT's tiers, and shrunk CLI runs under three protocols
(started first, in the background, and awaited by the last tests)."""

import csv
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from fedqs_jax.algorithms import Arrivals, Broadcast, fedat, m_step, safa
from tests.common import finish, start_cli, tiny_args
from tests.test_algorithms import build, flat, params_like, rows

ALGORITHMS = "m_step,wkafl,safa,fedat"
PROTOCOLS = ("semi_async", "sync", "tick")


@pytest.fixture(scope="module", autouse=True)
def cli_runs(tmp_path_factory):
  """The shrunk CLI runs, started before the first test and awaited by the last ones:
  the four under the default protocol (`semi_async`, 20 rounds), `sync` and `tick`
  (10 rounds)."""
  root = tmp_path_factory.mktemp("cli")
  procs = {}
  for protocol in PROTOCOLS:
    short = {} if protocol == "semi_async" else {"schedule.protocol": protocol,
                                                  "schedule.num_rounds": 10}  # fmt: skip
    args = tiny_args(**{"algorithms": ALGORITHMS, **short})
    procs[protocol] = (start_cli(f"--workdir={root / protocol}", *args), root / protocol)
  yield procs
  for proc, _ in procs.values():
    if proc.poll() is None:
      proc.kill()


def unflat(vector, like):
  return ravel_pytree(like)[1](jnp.asarray(vector, jnp.float32))


def stack(vectors, like):
  return jax.tree.map(lambda *x: jnp.stack(x), *[unflat(v, like) for v in vectors])


def arrivals_of(payload, client, staleness=None, num_examples=None, mask=None):
  k = len(client)
  staleness = jnp.asarray(np.zeros(k) if staleness is None else staleness, jnp.int32)
  n = np.full(k, 10.0) if num_examples is None else num_examples
  return Arrivals(
    payload=payload,
    client=jnp.asarray(client, jnp.int32),
    staleness=staleness,
    num_examples=jnp.asarray(n, jnp.float32),
    version=50 - staleness,
    mask=jnp.ones(k, bool) if mask is None else jnp.asarray(mask, bool),
  )


def broadcast(params, client, version):
  return Broadcast(
    params, params, jnp.int32(client), jnp.int32(version), jnp.float32(5), lambda p: (None, None)
  )


def close(a, b, rtol=1e-5, atol=1e-6):
  np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


# -- M-step --------------------------------------------------------------------------


def m_step_numpy(w, x, n, clients, uploads, frequency):
  """The M-step round in float64: (new model, upload counts after the round)."""
  c = uploads.astype(np.float64).copy()
  np.add.at(c, clients, 1.0)
  counts = c[clients]
  if frequency == "mirrored":
    ascending = np.sort(counts)
    mirror = [ascending[len(counts) - 1 - np.sum(counts < ci)] for ci in counts]
    q = np.array(mirror) / counts.sum()
  else:
    q = counts / c.sum()
  lam = np.abs(x @ w / np.einsum("kp,kp->k", x, x) - 1.0)
  with np.errstate(divide="ignore"):
    logp = np.log(n) - 2.0 * lam / q
  p = np.exp(logp - logp.max())
  p /= p.sum()
  return p @ x, c


@pytest.mark.parametrize("frequency", m_step.FREQUENCIES)
def test_m_step_round_is_the_numpy_transcription(frequency):
  algo, hp = build("m_step", **{"m_step.frequency": frequency})
  params = params_like(0)
  w = flat(params)
  rng = np.random.default_rng(1)
  # Local models near the global one (lambda ~ 1e-2), client 2 twice, one empty client.
  x = w * (1 + rng.normal(0, 0.02, (5, 1))) + rng.normal(0, 0.02, (5, w.size))
  clients = np.array([2, 0, 2, 5, 3])
  n = np.array([4.0, 9.0, 4.0, 0.0, 7.0])
  uploads = np.array([3.0, 0.0, 1.0, 6.0, 2.0, 0.0])
  state = m_step.MStepServerState(jnp.asarray(uploads, jnp.float32))
  arr = arrivals_of(stack(x, params), clients, num_examples=n)
  new, state, _ = algo.aggregate(state, params, arr, hp)
  expected, counts = m_step_numpy(w, x, n, clients, uploads, frequency)
  close(flat(new), expected)
  np.testing.assert_array_equal(state.uploads, counts)


def test_mirrored_share_gives_frequent_uploaders_the_smallest_q():
  counts = jnp.array([5.0, 1.0, 3.0, 1.0, 8.0])
  mask = jnp.array([True, True, True, True, False])  # the masked count takes no part
  q = m_step.mirrored_share(counts, mask)
  np.testing.assert_allclose(q, np.array([1.0, 5.0, 1.0, 5.0, 0.0]) / 10.0, rtol=1e-6)


def test_m_step_weights_normalise_where_every_exp_underflows():
  """exp(-2 lambda / q) is 0 in float32 for both arrivals; the log-space weights are not."""
  p = m_step.weights(
    jnp.array([2.0, 1.0, 5.0]), jnp.array([50.0, 55.0, 0.0]), jnp.array([0.1, 0.1, 0.0]),
    jnp.array([True, True, True]),
  )  # fmt: skip
  logits = np.log([2.0, 1.0]) - 2.0 * np.array([50.0, 55.0]) / 0.1  # about -1000, -1100
  close(p, np.append(np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum(), 0.0))


def test_m_step_continues_from_its_own_model_until_a_new_global_model_exists():
  algo, hp = build("m_step")
  params, own, trained = params_like(0), params_like(5), params_like(6)
  server, clients = algo.init(params, 4, hp)
  row = jax.tree.map(lambda x: x[1], clients)
  assert int(row.version) == -1  # no task yet: the first one trains from w^v
  task, row, info = algo.client_begin(row, server, broadcast(params, 1, 7), hp)
  close(flat(task.start), flat(params))
  assert float(info["own_model"]) == 0.0
  payload, row = algo.client_end(row, broadcast(params, 1, 7), trained, hp)
  close(flat(payload), flat(trained))
  close(flat(row.model), flat(trained))
  row = row._replace(model=own)
  # Version 7 again: nothing was aggregated since, the client keeps its own model.
  task, row, info = algo.client_begin(row, server, broadcast(params, 1, 7), hp)
  close(flat(task.start), flat(own))
  assert float(info["own_model"]) == 1.0
  # Version 8: a new global model, trained from.
  task, row, info = algo.client_begin(row, server, broadcast(params, 1, 8), hp)
  close(flat(task.start), flat(params))
  assert int(row.version) == 8 and float(info["own_model"]) == 0.0
  # multi_step off: no per-client model, always w^v.
  single, hp = build("m_step", **{"m_step.multi_step": False})
  server, clients = single.init(params, 4, hp)
  assert clients.model == ()
  task, _, _ = single.client_begin(jax.tree.map(lambda x: x[1], clients), server,
                                   broadcast(params, 1, -1), hp)  # fmt: skip
  assert task.start is None


# -- WKAFL ---------------------------------------------------------------------------


def clip_rows(g, bound):
  norms = np.linalg.norm(g, axis=1, keepdims=True)
  return g * np.minimum(1.0, bound / np.maximum(norms, 1e-300))


def wkafl_numpy(w, deltas, tau, prev, t, h):
  """The WKAFL round in float64: (new model, G^t, which arrivals were kept)."""
  g = clip_rows(deltas + h["alpha"] * prev, h["cb1"])
  a = (math.e / 2) ** (-tau.astype(np.float64))
  a /= a.sum()
  g_hat = a @ g
  sim = g @ g_hat / (np.linalg.norm(g, axis=1) * np.linalg.norm(g_hat))
  keep = sim > h["sim_threshold"]
  p = np.where(keep, np.exp(h["beta"] * sim) * a, 0.0)
  if t >= h["stage_rounds"]:
    g = clip_rows(g, h["cb2"] * np.linalg.norm(g_hat))
  if not keep.any():
    return w, np.zeros_like(w), keep
  update = (p / p.sum()) @ g
  lr = h["server_lr"] / (1.0 + h["lr_decay"] * tau.min())
  return w + lr * update, update, keep


def wkafl_round(t, overrides=None, deltas=None, tau=(3, 0, 7, 1), prev_scale=0.2):
  algo, hp = build("wkafl", **{"wkafl.stage_rounds": 5.0, "wkafl.server_lr": 0.7,
                               **(overrides or {})})  # fmt: skip
  params = params_like(0)
  w = flat(params)
  rng = np.random.default_rng(2)
  d = rng.normal(size=w.size)
  if deltas is None:  # aligned, aligned, opposite (filtered out), huge (clipped to cb1)
    deltas = np.stack([0.5 * d, 2.0 * d, -d, 40.0 * d]) + rng.normal(0, 0.3, (4, w.size))
  prev = prev_scale * rng.normal(size=w.size)
  state, _ = algo.init(params, 10, hp)
  state = state._replace(prev_update=unflat(prev, params), round=jnp.int32(t))
  arr = arrivals_of(stack(deltas, params), [0, 1, 2, 3], staleness=np.array(tau))
  new, state, metrics = algo.aggregate(state, params, arr, hp)
  h = {k: float(v) for k, v in hp.items()}
  expected, update, keep = wkafl_numpy(w, deltas, np.array(tau), prev, t, h)
  return new, state, metrics, expected, update, keep, (deltas, prev, h)


@pytest.mark.parametrize("t", [0, 5], ids=["stage_one", "stage_two"])
def test_wkafl_round_is_the_numpy_transcription(t):
  new, state, metrics, expected, update, keep, (deltas, prev, h) = wkafl_round(t)
  np.testing.assert_array_equal(keep, [True, True, False, True])  # the filter is exercised
  assert float(metrics["kept"]) == 3
  assert np.linalg.norm(deltas[3] + h["alpha"] * prev) > h["cb1"]  # and the cb1 clip
  close(flat(new), expected, rtol=1e-5, atol=1e-5)
  close(flat(state.prev_update), update, rtol=1e-5, atol=1e-5)
  assert int(state.round) == t + 1


def test_wkafl_stage_two_clips_to_cb2_times_the_estimate():
  """Stage two changes the result only through the cb2 clip: with a huge cb2 it is stage one."""
  one = wkafl_round(0)[0]
  two = wkafl_round(5)[0]
  unclipped = wkafl_round(5, {"wkafl.cb2": 1e6})[0]
  assert np.abs(flat(one) - flat(two)).max() > 1e-3
  close(flat(unclipped), flat(one))


def test_wkafl_keeps_the_model_when_no_arrival_passes_the_filter():
  new, state, metrics, expected, update, keep, _ = wkafl_round(3, {"wkafl.sim_threshold": 1.0})
  assert not keep.any() and float(metrics["kept"]) == 0
  params = params_like(0)
  np.testing.assert_array_equal(flat(new), flat(params))
  np.testing.assert_array_equal(flat(state.prev_update), 0.0)  # G^t: the (zero) update applied


# -- SAFA ----------------------------------------------------------------------------


def safa_numpy(w0, sizes, rounds, tol):
  """SAFA as written (O(N P) per round) in float64: the global model after each round."""
  n = len(sizes)
  cache, last = np.tile(w0, (n, 1)), np.zeros(n, int)
  w, out = w0, []
  for t, (clients, x) in enumerate(rounds):
    bypass = {}
    for c, xi in zip(clients, x, strict=True):
      if c in bypass:
        bypass[c] = xi  # a later arrival of the same client this round
      else:
        cache[c], last[c], bypass[c] = xi, t, None
    for c in range(n):
      if t - last[c] > tol:
        cache[c], last[c] = w, t  # forced synchronisation: the lag counts from now
    w = sizes @ cache / sizes.sum()
    for c, xi in bypass.items():
      if xi is not None:
        cache[c] = xi
    out.append(w)
  return out


def random_rounds(n, k, num_rounds, seed, like):
  rng = np.random.default_rng(seed)
  p = flat(like).size
  out = []
  for _ in range(num_rounds):
    clients = rng.choice(n // 2, k) if rng.random() < 0.5 else rng.choice(n, k)  # duplicates
    out.append((clients, rng.normal(size=(k, p))))
  return out


def run_safa(algo, params, rounds, sizes):
  state, _ = algo.init(params, len(sizes), {})
  models, resets = [], 0.0
  for clients, x in rounds:
    arr = arrivals_of(stack(x, params), clients, num_examples=sizes[clients])
    params, state, metrics = algo.aggregate(state, params, arr, {})
    models.append(flat(params))
    resets += float(metrics["lag_resets"])
  return models, state, resets


@pytest.mark.parametrize("tol", [0, 2, math.inf])
def test_safa_rounds_are_the_numpy_transcription(tol):
  n, k = 8, 3
  sizes = np.array([3.0, 9.0, 1.0, 4.0, 7.0, 2.0, 5.0, 6.0])
  params = params_like(0)
  algo = safa.safa(sizes, lag_tolerance=0 if tol == math.inf else tol, lag_reset=tol != math.inf)
  rounds = random_rounds(n, k, 14, 0, params)
  models, state, resets = run_safa(algo, params, rounds, sizes)
  expected = safa_numpy(flat(params), sizes, rounds, tol)
  for t, (a, b) in enumerate(zip(models, expected, strict=True)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=f"round {t}")
  assert (resets > 0) == (tol != math.inf)  # the resets are exercised
  assert any(len(set(c.tolist())) < k for c, _ in rounds)  # and the duplicates
  # The running sum is the weighted sum of the cached rows (clients seen, not reset
  # since); each reset client's entry is its cohort's.
  cached = np.asarray(state.seen & ~state.reset)
  close(flat(state.total), sizes[cached] @ rows(state.cache)[cached], rtol=1e-4, atol=1e-4)
  if tol != math.inf:
    reset, phase = np.asarray(state.reset), np.asarray(state.last) % (tol + 1)
    sizes_by_phase = np.bincount(phase[reset], sizes[reset], minlength=tol + 1)
    close(np.asarray(state.cohort_size), sizes_by_phase)


def test_safa_with_every_client_fresh_and_no_lag_limit_is_fedavg():
  """K = N, every client arrives once per round, infinite tolerance: w = FedAvg of the
  arrivals, which here are every client's cache entry."""
  n = 5
  sizes = np.array([3.0, 1.0, 4.0, 1.0, 5.0])
  params = params_like(0)
  algo = safa.safa(sizes, lag_reset=False)
  fedavg, fedavg_hp = build("fedavg")
  state, _ = algo.init(params, n, {})
  rng = np.random.default_rng(3)
  w = params
  for r in range(3):
    clients = rng.permutation(n)
    arr = arrivals_of(params_like(10 + r, (n,)), clients, num_examples=sizes[clients])
    w, state, _ = algo.aggregate(state, w, arr, {})
    expected, _, _ = fedavg.aggregate((), params, arr, fedavg_hp)
    close(flat(w), flat(expected))


def test_safa_learns_data_sizes_and_is_exact_once_every_client_arrived():
  sizes = np.array([3.0, 9.0, 1.0, 4.0, 7.0, 2.0])
  params = params_like(0)
  rng = np.random.default_rng(4)
  order = [[0, 1], [2, 1], [3, 4], [5, 0], [2, 3], [4, 1]]  # everyone seen after round 3
  rounds = [(np.array(c), rng.normal(size=(2, flat(params).size))) for c in order]
  exact, _, _ = run_safa(safa.safa(sizes, lag_reset=False), params, rounds, sizes)
  learned, _, _ = run_safa(safa.safa(None, lag_reset=False), params, rounds, sizes)
  # Round 0: clients 0 and 1 seen; the 4 others weighted by the mean seen size, 6 each.
  x0 = rounds[0][1]
  close(learned[0], (3 * x0[0] + 9 * x0[1] + 4 * 6.0 * flat(params)) / (6 * 6.0))
  assert np.abs(learned[2] - exact[2]).max() > 1e-3
  for a, b in zip(learned[3:], exact[3:], strict=True):
    close(a, b, rtol=1e-4, atol=1e-5)


def test_safa_updates_its_cache_in_place():
  """A round reads and writes K rows of the [N, *params] cache: compiled as the engine
  runs it (a scan over rounds, vmapped over the grid, state donated), XLA copies none of
  its buffers (a copy would cost O(N P) per round)."""
  n, k, num_rounds = 37, 4, 3
  algo = safa.safa(np.full(n, 5.0))
  state, _ = jax.vmap(lambda p: algo.init(p, n, {}))(params_like(0, (1,)))
  rng = np.random.default_rng(7)
  arr = Arrivals(
    payload=params_like(1, (num_rounds, k)),
    client=jnp.asarray(rng.integers(0, n, (num_rounds, k)), jnp.int32),
    staleness=jnp.zeros((num_rounds, k), jnp.int32),
    num_examples=jnp.full((num_rounds, k), 5.0),
    version=jnp.zeros((num_rounds, k), jnp.int32),
    mask=jnp.ones((num_rounds, k), bool),
  )

  def rounds(state, params, arr):
    def one(carry, a):
      params, state, _ = algo.aggregate(carry[1], carry[0], a, {})
      return (params, state), None

    return jax.lax.scan(one, (params, state), arr)[0]

  chunk = jax.jit(jax.vmap(rounds, in_axes=(0, 0, None)), donate_argnums=0)
  hlo = chunk.lower(state, params_like(0, (1,)), arr).compile().as_text()
  assert "f32[1,37,4,3]" in hlo  # the cache is there
  assert not [line for line in hlo.splitlines() if " copy(" in line and f"[1,{n}," in line]


# -- FedAT ---------------------------------------------------------------------------


def test_fedat_tiers_are_latency_quantiles_fastest_first():
  latency = np.random.default_rng(0).permutation(np.arange(1, 11))
  np.testing.assert_array_equal(fedat.tiers(latency, 5), (latency - 1) // 2)
  ties = np.array([5, 5, 5, 5, 1, 1, 9, 9, 9, 9])  # quantile tiers 1, 0, 3: renumbered
  np.testing.assert_array_equal(fedat.tiers(ties, 5), [1, 1, 1, 1, 0, 0, 2, 2, 2, 2])
  np.testing.assert_array_equal(fedat.tiers(np.full(7, 3.0), 5), np.zeros(7))
  np.testing.assert_array_equal(fedat.tiers(np.array([30.0, 10.0, 20.0]), 5), [2, 0, 1])


def fedat_state(algo, hp, models, updates, round_):
  params = params_like(0)
  state, _ = algo.init(params, 10, hp)
  return state._replace(
    tier_model=stack(models, params),
    updates=jnp.asarray(updates, jnp.float32),
    round=jnp.int32(round_),
  )


def test_fedat_mirrored_weights_by_hand():
  """Tiers of two clients each; tier 4 has no update yet. Two arrivals from tier 1."""
  tier_of = np.arange(10) // 2
  algo = fedat.fedat(tier_of)
  hp = {"warmup_rounds": jnp.float32(30.0)}
  params = params_like(0)
  rng = np.random.default_rng(5)
  models = rng.normal(size=(5, flat(params).size))
  state = fedat_state(algo, hp, models, [10, 6, 3, 1, 0], 40)
  x = rng.normal(size=(2, flat(params).size))
  arr = arrivals_of(stack(x, params), [3, 2], num_examples=np.array([1.0, 3.0]))
  new, state, metrics = algo.aggregate(state, params, arr, hp)
  models[1] = (1 * x[0] + 3 * x[1]) / 4  # tier 1's model: FedAvg of its arrivals
  np.testing.assert_array_equal(state.updates, [10, 8, 3, 1, 0])
  omega = np.array([0, 1, 3, 8, 0]) / 12  # u_(4-j), tier 4 left out: it has no model
  close(rows(state.tier_model), models)
  close(flat(new), omega @ models)
  assert float(metrics["warm_up"]) == 0.0


@pytest.mark.parametrize("round_,updates", [(10, [10, 6, 3, 1, 0]), (40, [0, 0, 0, 0, 0])])
def test_fedat_warm_up_and_its_fallback_are_fedavg(round_, updates):
  """During warm-up (round 10 < 30), and when no tier has a positive mirrored weight
  (only the fastest tier has reported, its mirror has not), the round is FedAvg."""
  algo = fedat.fedat(np.arange(10) // 2)
  hp = {"warmup_rounds": jnp.float32(30.0)}
  params = params_like(0)
  models = np.random.default_rng(6).normal(size=(5, flat(params).size))
  state = fedat_state(algo, hp, models, updates, round_)
  n = np.array([2.0, 5.0, 1.0])
  arr = arrivals_of(params_like(7, (3,)), [0, 1, 0], num_examples=n)  # all from tier 0
  new, _, metrics = algo.aggregate(state, params, arr, hp)
  fedavg, fedavg_hp = build("fedavg")
  expected, _, _ = fedavg.aggregate((), params, arr, fedavg_hp)
  close(flat(new), flat(expected), rtol=1e-6, atol=1e-7)
  assert float(metrics["warm_up"]) == 1.0


# -- The command line, three protocols ------------------------------------------------


def read(path):
  with open(path) as f:
    return list(csv.DictReader(f))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_four_run_from_the_command_line(cli_runs, protocol):
  """Every protocol: exit 0, one summary row per algorithm, finite losses. Every M-step
  task brings a newer global model, even on tick: none starts from the client's own
  model (no client is re-dispatched with an unchanged version)."""
  proc, workdir = cli_runs[protocol]
  finish(proc)
  names = ALGORITHMS.split(",")
  assert [r["algorithm"] for r in read(workdir / "summary.csv")] == names
  metrics = read(workdir / "metrics.csv")
  by_name = {name: [r for r in metrics if r["algorithm"] == name] for name in names}
  for r in metrics:
    assert 0.0 <= float(r["test_accuracy"]) <= 1.0 and math.isfinite(float(r["test_loss"]))
  assert sum(float(r["dispatched"]) for r in by_name["m_step"]) > 0
  assert all(float(r["dispatch_own_model"]) == 0 for r in by_name["m_step"])
  assert all(float(r["warm_up"]) == 1 for r in by_name["fedat"])  # 20 rounds < 30

"""Cost of one FedSQ dual-mode local SGD step relative to the plain model's step.

  python benchmarks/dual_step.py [--steps=100] [--repeats=7]

Workload: digits-shaped minibatches (batch 32, [32, 8, 8, 1], 10 classes); the MLP
(hidden 64) and the CNN (channels 16, 32; average pooling, and max pooling, whose dual
step reuses the structural argmax), as `models.build` builds them by default. A step is
value_and_grad of the mean cross-entropy + an optax SGD update (lr 0.1):

  plain  loss(module.apply({"params": p}, x))
  dual   loss(dual.dual_apply(module, {"params": s}, {"params": p}, x)), the structural
         params `s` an argument (not a compile-time constant), like the engine's

Each program runs `--steps` steps in a `lax.scan` (one jitted call, so that dispatch is
amortised as in the engine's local loop), each step on its own minibatch (with a fixed
one XLA would hoist the structural forward, loop-invariant, out of the loop). Compile time
(lower + compile) is reported separately; the step time is the median over `--repeats`
calls of call time / steps, the programs timed in alternation so that machine noise hits
all alike. "forward dual/plain" is the same ratio for the loss alone (no gradient), the
cost of dual-mode evaluation.

The dual step adds one forward pass of the structural copy (no backward through it) and
a `where` per ReLU; it costs little where the backward pass dominates the step. On
XLA:CPU the CNN's convolution weight gradients dominate the step, so the dual CNN step
costs about the plain one while the dual forward costs ~2x the plain one. Observed on 2
shared CPU cores under load 6-9 from other processes (jax 0.10.2), `--repeats=11`:

  model    plain us/step  dual us/step  dual/plain  forward dual/plain
  mlp               45.0          66.5       1.48x               0.96x
  cnn             3772.0        4116.2       1.09x               1.93x
  cnn_max         4247.7        4355.7       1.03x               1.94x

Over three such runs dual/plain was 1.12-1.48x (mlp), 1.00-1.09x (cnn), 0.83-1.03x
(cnn_max) and the forward ratio 0.96-1.35x (mlp, 12-45 us steps: noise) and 1.9-2.1x
(cnn): rerun on a quiet machine for tighter numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import ml_collections
import optax
from common import compilation_cache, loadavg, table, timed, version

from fedqs_jax import models
from fedqs_jax.models import dual

MODELS = {
  "mlp": {"name": "mlp"},
  "cnn": {"name": "cnn"},
  "cnn_max": {"name": "cnn", "pool": "max"},
}


def program(module, forward, train: bool = True):
  """A jitted function (params, structural, xs, ys) -> (params, last loss) after one SGD
  step per minibatch of xs [steps, 32, ...], ys [steps, 32]; with `train=False` only the
  losses are computed (forward only), params unchanged."""
  opt = optax.sgd(0.1)

  def loss(p, s, x, y):
    logits = forward(module, p, s, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def run(p, s, xs, ys):
    def step(carry, batch):
      (p, state), (x, y) = carry, batch
      if not train:
        return carry, loss(p, s, x, y)
      value, grads = jax.value_and_grad(loss)(p, s, x, y)
      updates, state = opt.update(grads, state, p)
      return (optax.apply_updates(p, updates), state), value

    (p, _), values = jax.lax.scan(step, (p, opt.init(p)), (xs, ys))
    return p, values[-1]

  return jax.jit(run)


def plain_forward(module, p, s, x):
  return module.apply({"params": p}, x)


def dual_forward(module, p, s, x):
  return dual.dual_apply(module, {"params": s}, {"params": p}, x)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args(argv)
  compilation_cache()  # a fresh temporary cache: the compiles it times stay cold
  kx, ky, kp = jax.random.split(jax.random.PRNGKey(0), 3)
  xs = jax.random.normal(kx, (args.steps, 32, 8, 8, 1))
  ys = jax.random.randint(ky, (args.steps, 32), 0, 10)
  rows = []
  for name, fields in MODELS.items():
    module = models.build(ml_collections.ConfigDict(fields), 10)
    params = module.init(kp, xs[0])["params"]
    compiled, compile_s, times = {}, {}, {}
    for kind, forward, train in (("plain", plain_forward, True), ("dual", dual_forward, True),
                                 ("plain_fwd", plain_forward, False),
                                 ("dual_fwd", dual_forward, False)):  # fmt: skip
      start = time.perf_counter()
      compiled[kind] = program(module, forward, train).lower(params, params, xs, ys).compile()
      compile_s[kind] = time.perf_counter() - start
      timed(compiled[kind], params, params, xs, ys)  # warm-up
      times[kind] = []
    for _ in range(args.repeats):
      for kind in compiled:
        times[kind].append(timed(compiled[kind], params, params, xs, ys)[1] / args.steps)
    med = {kind: statistics.median(t) for kind, t in times.items()}
    rows.append([
      name, f"{med['plain'] * 1e6:.1f}", f"{med['dual'] * 1e6:.1f}",
      f"{med['dual'] / med['plain']:.2f}x", f"{med['dual_fwd'] / med['plain_fwd']:.2f}x",
      f"{compile_s['plain']:.2f}", f"{compile_s['dual']:.2f}",
    ])  # fmt: skip
  print(
    f"devices {jax.devices()}, jax {jax.__version__}, flax {version('flax')}, "
    f"load {loadavg()}; batch 32 x [8, 8, 1], {args.steps} steps per call, "
    f"median of {args.repeats}"
  )
  header = ["model", "plain us/step", "dual us/step", "dual/plain", "forward dual/plain",
            "compile plain s", "compile dual s"]  # fmt: skip
  print(table(header, rows))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

"""Central pretraining on a source task: the warm start of FedSQ and its baselines.

  python -m experiments.pretrain --workdir=runs/pretrain_mnist8
  python -m experiments.pretrain --config=experiments/configs/pretrain_mnist8.py \
      --workdir=runs/p --config.pretrain.epochs=30

Trains `config.model` on all training examples of `config.data` (one client's worth of
data, centrally: no schedule, no federation) with SGD and momentum, printing the loss
and test accuracy per epoch, then writes an orbax checkpoint of the model's variables
and `model.json` (`fedqs_jax.pretrained`) to `--workdir`. Start any run from it with
`--config.model.init_checkpoint=<workdir>`.

Bad input (flags, the config file, its overrides, the workdir) prints one line and exits 2.
"""

import os
import sys
import time

from absl import flags, logging

from fedqs_jax import cli

_DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "pretrain_mnist8.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the checkpoint.", required=True)
_CONFIG_FILE = []
parse_flags = cli.config_parser(_DEFAULT, _CONFIG_FILE)


def pretrain(config, workdir: str, stream=sys.stdout) -> dict:
  """Trains `config.model` centrally on `config.data` and saves it to `workdir`."""
  import jax
  import jax.numpy as jnp
  import optax

  from fedqs_jax import data as data_lib
  from fedqs_jax import engine, models, pretrained, program
  from fedqs_jax.errors import check

  p = config.pretrain
  for field in ("epochs", "batch_size"):
    check(isinstance(p[field], int) and p[field] >= 1, f"pretrain.{field}", p[field],
          "must be an integer >= 1")  # fmt: skip
  check(p.lr > 0, "pretrain.lr", p.lr, "must be > 0")
  check(0 <= p.momentum < 1, "pretrain.momentum", p.momentum, "must be in [0, 1)")
  data = data_lib.load(config.data, config.data.seed)
  models.validate(config.model)
  _, fns = program.config_model_fns(config, data.num_classes, data.x_train[:1])
  n, b = int(data.y_train.shape[0]), p.batch_size
  steps = max(n // b, 1)
  key = jax.random.PRNGKey(config.seed)
  variables = fns.init(key, data.x_train[:1])
  opt = optax.sgd(p.lr, momentum=p.momentum)

  def loss_fn(v, xb, yb, k):
    logits, state = fns.train(v, xb, k)
    return engine.cross_entropy(logits, yb, jnp.ones(yb.shape)), state

  @jax.jit
  def epoch(v, opt_state, k):
    order = jax.random.permutation(k, n)[: steps * b].reshape(steps, b)

    def step(carry, idx):
      v, opt_state, s = carry
      (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        v, data.x_train[idx], data.y_train[idx], jax.random.fold_in(k, s)
      )
      updates, opt_state = opt.update(grads, opt_state, v)
      v = optax.apply_updates(v, updates)
      if state:  # BatchNorm's running statistics
        v = {**v, **state}
      return (v, opt_state, s + 1), loss

    (v, opt_state, _), losses = jax.lax.scan(step, (v, opt_state, 0), order)
    return v, opt_state, losses.mean()

  evaluate = jax.jit(lambda v: jnp.mean(jnp.argmax(fns.apply(v, data.x_test), -1) == data.y_test))
  opt_state = opt.init(variables)
  start = time.perf_counter()
  for e in range(p.epochs):
    variables, opt_state, loss = epoch(variables, opt_state, jax.random.fold_in(key, e))
    accuracy = float(evaluate(variables))
    elapsed = time.perf_counter() - start
    print(f"epoch {e + 1}/{p.epochs} | train loss {float(loss):.4f} | test accuracy "
          f"{100 * accuracy:.2f} | {elapsed:.0f}s", file=stream, flush=True)  # fmt: skip
  source = {"data": config.data.to_dict(), "epochs": p.epochs, "test_accuracy": accuracy,
            "examples": int(n)}  # fmt: skip
  pretrained.save(workdir, variables, config.model, data.num_classes, source)
  print(f"saved {workdir} (test accuracy {100 * accuracy:.2f} on {config.data.name})", file=stream)
  return {"variables": variables, "test_accuracy": accuracy}


def main(argv):
  cli.check_no_arguments(argv)
  cli.check_writable_folder("workdir", _WORKDIR.value)
  logging.set_verbosity(logging.WARNING)
  pretrain(FLAGS.config, _WORKDIR.value)


FLAGS = flags.FLAGS

if __name__ == "__main__":
  cli.run(main, parse_flags)

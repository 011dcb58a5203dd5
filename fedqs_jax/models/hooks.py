"""The models' nonlinearities as hook points, for FedSQ's dual mode (`fedqs_jax.models.dual`).

The models call their ReLUs, max-pools and BatchNorm mode through these functions:

  relu(x)                              ReLU
  max_pool(x, window, strides, pad)    max pooling, as `flax.linen.max_pool`
  use_running_average(train)           BatchNorm's `use_running_average`: `not train`

Outside a dual pass (no tape active) they are exactly `nn.relu`, `nn.max_pool` and
`not train`: the traced computation is the one of plain Flax, so normal use compiles to
the same program and gives bitwise the same outputs. They are plain functions, not
modules, so they add no variables and no entries to `capture_intermediates` (which the
memory estimate reads).

A dual pass (`dual.dual_apply`) runs the module twice in one trace, each time under a
`Tape` held in a context variable (read at trace time, so the tape works under `jit`,
`grad` and `vmap` of the whole call):

  record  the structural pass: every `relu` appends its gate `x > 0` (bool, shape of x)
          and every `max_pool` the argmax of each window (int32, shape of the output:
          the window offset in row-major order, the first maximum on ties), in call
          order; the outputs are the plain ones;
  replay  the quantitative pass: the i-th hook call takes the i-th entry (kind and shape
          checked): `relu` returns `where(gate, x, 0)`, `max_pool` the input at the
          recorded position of each window (or, with `reuse_pool=False`, pools `x`
          normally).

Call order is the models' Python order, the same in both passes because both run the
same module code on same-shaped inputs. A model must not call a hook inside a Flax
lifted transform (`nn.scan`, `nn.remat`, `nn.vmap`): the tape would hold values of an
inner trace. None of the gated models does (the LSTM's `nn.RNN` scans, and it has no
ReLU; FedSQ refuses it).

`frozen=True` on the tape makes every BatchNorm that asks `use_running_average(train)`
normalise with its running statistics in training too (FedSQ's "frozen" BatchNorm).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import itertools
from collections.abc import Iterator, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

RECORD, REPLAY = "record", "replay"


@dataclasses.dataclass
class Tape:
  """The gates of one dual pass: `entries` [(kind, array)] in hook call order."""

  mode: str
  reuse_pool: bool = True
  frozen: bool = False
  entries: list[tuple[str, jnp.ndarray]] = dataclasses.field(default_factory=list)
  position: int = 0

  def take(self, kind: str, shape: tuple[int, ...]) -> jnp.ndarray:
    """The next recorded entry, which must be a `kind` of `shape`."""
    if self.position >= len(self.entries):
      raise RuntimeError(
        f"FedSQ replay: {kind} call {self.position} has no recorded gate (the structural "
        f"pass recorded {len(self.entries)}); the two passes must run the same module"
      )
    got, value = self.entries[self.position]
    if got != kind or value.shape != tuple(shape):
      raise RuntimeError(
        f"FedSQ replay: hook call {self.position} is a {kind} of shape {tuple(shape)}, "
        f"the structural pass recorded a {got} of shape {value.shape}"
      )
    self.position += 1
    return value


_TAPE: contextvars.ContextVar[Tape | None] = contextvars.ContextVar("fedsq_tape", default=None)


@contextlib.contextmanager
def active(tape: Tape) -> Iterator[Tape]:
  """Runs the hooks of the enclosed module calls against `tape`."""
  token = _TAPE.set(tape)
  try:
    yield tape
  finally:
    _TAPE.reset(token)


def relu(x: jnp.ndarray) -> jnp.ndarray:
  """`nn.relu(x)`; in a dual pass, records the gate `x > 0` or applies the recorded one."""
  tape = _TAPE.get()
  if tape is None:
    return nn.relu(x)
  if tape.mode == RECORD:
    tape.entries.append(("relu", x > 0))
    return nn.relu(x)
  return jnp.where(tape.take("relu", x.shape), x, jnp.zeros((), x.dtype))


def _windows(x, window_shape, strides, padding) -> jnp.ndarray:
  """[K, *out_shape]: the K = prod(window_shape) values of every pooling window of `x`
  (batch axis first, then the pooled axes, then features, as `nn.max_pool`), padded like
  `nn.max_pool` (with -inf); window offsets in row-major order."""
  spatial = x.shape[1 : 1 + len(window_shape)]
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(spatial, window_shape, strides, padding)
  else:
    pads = [tuple(p) for p in padding]
  config = [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), *[(0, 0, 0)] * (x.ndim - 1 - len(pads))]
  padded = lax.pad(x, jnp.array(-jnp.inf, x.dtype), config)
  out = [
    (n + lo + hi - w) // s + 1
    for n, (lo, hi), w, s in zip(spatial, pads, window_shape, strides, strict=True)
  ]
  slices = []
  for offset in itertools.product(*(range(w) for w in window_shape)):
    start = [0, *offset, *[0] * (x.ndim - 1 - len(offset))]
    limit = [
      x.shape[0],
      *(o + s * (m - 1) + 1 for o, s, m in zip(offset, strides, out, strict=True)),
      *x.shape[1 + len(offset) :],
    ]
    step = [1, *strides, *[1] * (x.ndim - 1 - len(offset))]
    slices.append(lax.slice(padded, start, limit, step))
  return jnp.stack(slices)


def max_pool(
  x: jnp.ndarray,
  window_shape: Sequence[int],
  strides: Sequence[int] | None = None,
  padding: str | Sequence[tuple[int, int]] = "VALID",
) -> jnp.ndarray:
  """`nn.max_pool(x, window_shape, strides, padding)` for a batched input [B, *spatial, C];
  in a dual pass, records each window's argmax or takes `x` at the recorded positions."""
  window_shape = tuple(window_shape)
  strides = tuple(strides) if strides is not None else (1,) * len(window_shape)
  tape = _TAPE.get()
  if tape is None:
    return nn.max_pool(x, window_shape, strides, padding)
  if tape.mode == RECORD:
    tape.entries.append(("max_pool", jnp.argmax(_windows(x, window_shape, strides, padding), 0)))
    return nn.max_pool(x, window_shape, strides, padding)
  if not tape.reuse_pool:  # pool the quantitative activations normally
    pooled = nn.max_pool(x, window_shape, strides, padding)
    tape.take("max_pool", pooled.shape)
    return pooled
  windows = _windows(x, window_shape, strides, padding)
  index = tape.take("max_pool", windows.shape[1:])
  return jnp.take_along_axis(windows, index[None], axis=0)[0]


def use_running_average(train: bool) -> bool:
  """BatchNorm's `use_running_average`: `not train`, and True in a frozen dual pass."""
  tape = _TAPE.get()
  return not train or (tape is not None and tape.frozen)

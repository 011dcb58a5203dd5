"""Test-wide settings: tiny programs compile faster without most XLA optimizations, and
the tests (and the CLIs they start) neither read nor grow the user's compilation cache."""

import os

os.environ["FEDQS_JAX_COMPILATION_CACHE"] = "off"

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)

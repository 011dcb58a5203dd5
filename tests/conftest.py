"""Test-wide settings: tiny programs compile faster without most XLA optimizations."""

import jax

jax.config.update("jax_disable_most_optimizations", True)

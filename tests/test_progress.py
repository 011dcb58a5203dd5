"""The progress line's ETA separates compile (first chunks) from steady rounds."""

import io
import re

from fedqs_jax import report


def test_eta_counts_compile_once_per_algorithm(monkeypatch):
  clock = [0.0]
  monkeypatch.setattr(report.time, "perf_counter", lambda: clock[0])
  out = io.StringIO()
  progress = report.Progress(num_algorithms=2, rounds=30, stream=out, every=0.0)
  # Each algorithm: a first chunk of 10 s (compile + 10 rounds), then chunks of 1 s.
  durations = [10.0, 1.0, 1.0, 10.0, 1.0, 1.0]
  for i, seconds in enumerate(durations):
    clock[0] += seconds
    progress.update("a" if i < 3 else "b", 10, i % 3 + 1, 3)
  etas = re.findall(r"ETA\s+([\d.]+s|\?)", out.getvalue())
  true_remaining = [f"{sum(durations[i + 1 :]):.0f}s" for i in range(len(durations))]
  assert etas[0] == "?"  # a first chunk alone is compile + rounds: no honest estimate yet
  assert etas[1:] == true_remaining[1:]
  assert etas[-1] == "0s"

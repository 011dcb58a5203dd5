"""What a run reports: CSV rows, the console results table, report.md and the progress line.

`rows` turns one algorithm's training result into long-form metrics rows (one per
evaluation) and summary rows (one per grid entry); `results_table` is the table
printed at the end (mean +- std over seeds), from summary rows in memory or read back
from summary.csv (`SUMMARY_COLUMNS`); `markdown` is a run's report.md, which holds
that same table; `Progress` prints one line per chunk with the job's ETA. Nothing here
imports JAX (`experiments.plot` uses the table).
"""

from __future__ import annotations

import os
import re
import shlex
import statistics
import sys
import time
from collections.abc import Mapping, Sequence

import numpy as np

from fedqs_jax import metrics

# The summary.csv columns `results_table` reads, and their types (`diverged_round`: "" or
# the round, read as text).
SUMMARY_COLUMNS = {"algorithm": str, "final_accuracy": float, "best_accuracy": float,
                   "rounds_to_target": float, "time_to_target": float,
                   "oscillation_std": float}  # fmt: skip


def window_metrics(result: dict, g: int, start: int, stop: int) -> dict[str, float]:
  """The per-round metrics of rounds [start, stop) of seed g, summarised for one CSV row.

  `dispatch_*` entries (sums over each round's dispatched clients) and step counts
  are summed over the window, and a `dispatch_<x>_sum` also gives
  `dispatch_<x>_mean` per dispatched client; other metrics are averaged.
  `train_loss` is the mean over the rounds whose clients took local steps: NaN when
  none did (every dispatched client empty), not the engine's 0 for "no loss".
  """
  trained = result["client_steps"][g, start:stop] > 0
  losses = result["train_loss"][g, start:stop][trained]
  out = {"train_loss": float(losses.mean()) if losses.size else float("nan")}
  dispatched = float(result["dispatched"][g, start:stop].sum())
  out["client_steps"] = int(result["client_steps"][g, start:stop].sum())
  out["dispatched"] = int(dispatched)
  for key, values in result.items():
    per_round = (
      isinstance(values, np.ndarray) and values.shape[1:2] == result["train_loss"].shape[1:2]
    )
    if key in out or not per_round or key in ("test_accuracy", "test_loss"):
      continue
    window = values[g, start:stop]
    if key == "diverged":
      out[key] = bool(window.any())
    elif key.startswith("dispatch_"):
      if key.endswith("_sum"):
        out[key[: -len("_sum")] + "_mean"] = float(window.sum()) / max(dispatched, 1.0)
      else:
        out[key] = float(window.sum())
    else:
      out[key] = float(window.mean())
  return out


def rows(name, config, result, sched, static=None) -> tuple[list[dict], list[dict]]:
  """Long-form metrics rows and summary rows of one algorithm (one per grid entry);
  `static`: the group's static sweep values, a column each and part of the label."""
  from fedqs_jax import sweep  # imports JAX: only where results are made

  static = static or {}
  eval_round = result["eval_round"]
  staleness = np.asarray(sched.staleness)  # [seeds, T, K]
  round_time = np.asarray(sched.round_time)  # [seeds, T]
  swept = list(dict.fromkeys(k for p in sweep.points(config) for k in p))
  metric_rows, summary_rows = [], []
  for g, (point, seed, s) in enumerate(result["grid"]):
    prev = 0
    times = round_time[s, eval_round - 1]
    columns = {
      "sweep": sweep.label({**static, **point}),
      **static,
      **{k: point.get(k, "") for k in swept},
    }
    for e, r in enumerate(eval_round):
      window = staleness[s, prev:r]
      metric_rows.append(
        {
          "algorithm": name,
          **columns,
          "seed": seed,
          "round": int(r),
          "time": float(times[e]),
          "test_accuracy": float(result["test_accuracy"][g, e]),
          "test_loss": float(result["test_loss"][g, e]),
          "staleness_mean": float(window.mean()),
          "staleness_max": int(window.max()),
          **window_metrics(result, g, prev, r),
        }
      )
      prev = r
    stats = metrics.summarize(eval_round, times, result["test_accuracy"][g], config.target_accuracy)
    hit = np.flatnonzero(result["diverged"][g])
    stats["diverged_round"] = int(hit[0]) + 1 if hit.size else ""
    summary_rows.append({"algorithm": name, **columns, "seed": seed, **stats})
  return metric_rows, summary_rows


def curve_label(row: dict) -> str:
  """What a row's curve is called: its algorithm, and its sweep point if any."""
  return row["algorithm"] + (f"[{row['sweep']}]" if row.get("sweep") else "")


def _diverged(rows: list[dict]) -> list[int]:
  """The rounds at which the summary rows `rows` diverged (those that did)."""
  return [int(r["diverged_round"]) for r in rows if r.get("diverged_round", "") not in ("", None)]


def diverged_rounds(summary_rows: list[dict]) -> dict[str, int]:
  """{curve label: first round at which any of its seeds diverged}, for the curves that did."""
  out: dict[str, int] = {}
  for r in summary_rows:
    for when in _diverged([r]):
      out[curve_label(r)] = min(when, out.get(curve_label(r), when))
  return out


def results_table(summary_rows: list[dict], target: float) -> str:
  """The per-algorithm (and per-point) table, mean +- std over seeds, printed at the end.

  A point whose seeds all diverged shows `diverged@r` (r: the first round that was not
  finite) instead of its frozen accuracy, and `-` in the other columns; when only some
  seeds diverged, the numbers are those of the others and the row says how many
  diverged. summary.csv keeps every seed's frozen numbers and its `diverged_round`.
  """
  width = max([12] + [len(curve_label(r)) for r in summary_rows])
  header = (
    f"{'algorithm':<{width}} {'final acc':>16} {'best acc':>9} "
    f"{f'rounds to {target:.0%}':>16} {f'time to {target:.0%}':>16} {'oscillation':>11}"
  )
  lines = [header, "-" * len(header)]
  names = list(dict.fromkeys(curve_label(r) for r in summary_rows))
  for name in names:
    every = [r for r in summary_rows if curve_label(r) == name]
    rows = [r for r in every if not _diverged([r])]  # the seeds that did not diverge
    note = ""
    if len(rows) < len(every):
      mark = f"diverged@{min(_diverged(every))}"
      if not rows:
        lines.append(f"{name:<{width}} {mark:>16} {'-':>9} {'-':>16} {'-':>16} {'-':>11}")
        continue
      note = f"  ({len(every) - len(rows)}/{len(every)} seeds {mark}, not counted)"
    final = np.array([r["final_accuracy"] for r in rows])
    oscillation = np.mean([r["oscillation_std"] for r in rows])
    best = np.array([r["best_accuracy"] for r in rows])

    def reached(key, rows=rows):
      vals = np.array([r[key] for r in rows])
      ok = vals[np.isfinite(vals)]
      return f"{ok.mean():.0f} ({len(ok)}/{len(vals)})" if ok.size else "never"

    lines.append(
      f"{name:<{width}} {100 * final.mean():>8.2f} +- {100 * final.std():>4.2f} "
      f"{100 * best.mean():>9.2f} {reached('rounds_to_target'):>16} "
      f"{reached('time_to_target'):>16} {100 * oscillation:>11.2f}{note}"
    )
  return "\n".join(lines)


def command_line(argv: Sequence[str] | None = None) -> str:
  """`argv` shell-quoted; by default this process's own command line (`sys.orig_argv`:
  the interpreter and `-m module` included, so that it can be pasted into a shell)."""
  if argv is None:
    argv = getattr(sys, "orig_argv", None) or sys.argv
  return shlex.join(argv)


def fenced(text: str, info: str = "") -> str:
  """`text` as a markdown code block, verbatim: its fence is longer than any run of
  backticks in it."""
  runs = [len(r) for r in re.findall(r"`+", text)]
  fence = "`" * max([3] + [n + 1 for n in runs])
  return f"{fence}{info}\n{text}\n{fence}"


def _cell(value) -> str:
  if isinstance(value, bool | np.bool_):
    return str(bool(value))
  if isinstance(value, int | np.integer):
    return str(int(value))
  if isinstance(value, float | np.floating):
    return f"{float(value):.6g}"
  return str(value).replace("|", "\\|")


def schedule_table(summaries: Mapping[str, Mapping]) -> str:
  """The per-seed schedule summaries (`{group label: {seed: schedule.summary}}`, what
  schedule.json holds) as one markdown table: a row per (group, seed), a column per
  statistic; the group column only when there are several groups."""
  grouped = len(summaries) > 1
  columns = list(dict.fromkeys(k for per_seed in summaries.values()
                               for s in per_seed.values() for k in s))  # fmt: skip
  header = (["group"] if grouped else []) + ["seed"] + columns
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for tag, per_seed in summaries.items():
    for seed, stats in per_seed.items():
      cells = ([_cell(tag)] if grouped else []) + [_cell(seed)]
      cells += [_cell(stats[k]) if k in stats else "" for k in columns]
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def markdown(
  title: str,
  command: str,
  config_hash: str,
  algorithms: Sequence[str],
  seeds: Sequence[int],
  target: float,
  summaries: Mapping[str, Mapping],
  table: str,
  plots: Sequence[str],
  warnings: Sequence[str] = (),
  resumed: bool = False,
) -> str:
  """A run's report.md: its command line, config hash, schedule summary per seed, the
  results table `table` verbatim (the console's, byte for byte) and the plots `plots`
  (file names beside report.md), one file to open or paste."""
  parts = [
    f"# {title}",
    fenced(command, "sh"),
    "\n".join(
      [
        f"- config hash: `{config_hash}` (the resolved config in config.json; manifest.json)",
        f"- algorithms: {', '.join(algorithms)}",
        f"- seeds: {', '.join(str(s) for s in seeds)}",
        f"- target accuracy: {target:.0%}",
        *(["- resumed: the run continued from its checkpoints"] if resumed else []),
      ]
    ),  # fmt: skip
  ]
  if warnings:
    parts += ["## Warnings", "\n".join(f"- {w}" for w in warnings)]
  parts += [
    "## Schedule",
    "Per seed (schedule.json): throughput and the staleness distribution of the arrivals.",
    schedule_table(summaries),
    "## Results",
    "Mean +- std over seeds (summary.csv has every seed), as printed at the end of the run:",
    fenced(table),
  ]
  if plots:
    parts += ["## Plots", "\n\n".join(f"![{os.path.splitext(p)[0]}]({p})" for p in plots)]
  return "\n\n".join(parts) + "\n"


class Progress:
  """One progress line per chunk (at most every `every` seconds) with the job's ETA.

  The first chunk of each algorithm includes its compile, so the ETA adds the mean
  first-chunk time for each algorithm not started yet to the steady time per round
  (later chunks) for the remaining rounds. Chunks restored from a checkpoint
  (`restored`) count as done, untimed, so a resumed job counts from where it is.
  """

  def __init__(
    self, num_algorithms: int, rounds: int | list[int], stream=sys.stdout, every: float = 2.0
  ):
    """`rounds`: of every algorithm, or a list with the rounds of each run."""
    self.num_algorithms, self.stream, self.every = num_algorithms, stream, every
    self.total = sum(rounds) if isinstance(rounds, list) else num_algorithms * rounds
    self.done, self.started = 0, 0
    self.labels: set[str] = set()  # algorithms seen so far
    self.counted: dict[str, int] = {}  # chunks of each algorithm counted in `done`
    self.first_chunks: list[float] = []  # seconds of each algorithm's first chunk
    self.steady_seconds, self.steady_rounds = 0.0, 0
    self.start = self.last = self.previous = time.perf_counter()

  def eta(self, chunk_rounds: int) -> float | None:
    """Seconds left; None until a chunk after a first one has been timed."""
    if not self.steady_rounds:
      return None if self.done < self.total else 0.0
    per_round = self.steady_seconds / self.steady_rounds
    unstarted = self.num_algorithms - self.started
    compile_estimate = sum(self.first_chunks) / len(self.first_chunks) - per_round * chunk_rounds
    return (self.total - self.done) * per_round + unstarted * max(compile_estimate, 0.0)

  def restored(self, label: str, rounds: int, chunks: int, num_chunks: int) -> None:
    """`chunks` chunks of `rounds` rounds of `label` were restored from a checkpoint:
    counted as done, untimed; an algorithm restored whole compiles nothing."""
    self.done += (chunks - self.counted.get(label, 0)) * rounds
    self.counted[label] = chunks
    if chunks == num_chunks and label not in self.labels:
      self.labels.add(label)
      self.started += 1
    print(
      f"[{label}] restored {chunks}/{num_chunks} chunks from its checkpoint | "
      f"{self.done}/{self.total} rounds",
      file=self.stream,
      flush=True,
    )

  def update(self, label: str, rounds: int, chunk: int, num_chunks: int) -> None:
    now = time.perf_counter()
    if label not in self.labels:  # its first chunk in this process, compile included
      self.labels.add(label)
      self.started += 1
      self.first_chunks.append(now - self.previous)
    else:
      self.steady_seconds += now - self.previous
      self.steady_rounds += rounds
    self.previous = now
    self.done += (chunk - self.counted.get(label, 0)) * rounds  # with any not counted yet
    self.counted[label] = chunk
    if chunk < num_chunks and now - self.last < self.every:
      return
    self.last = now
    eta = self.eta(rounds)
    print(
      f"[{label}] chunk {chunk}/{num_chunks} | {self.done}/{self.total} rounds | "
      f"{now - self.start:5.0f}s elapsed | ETA " + ("    ?" if eta is None else f"{eta:5.0f}s"),
      file=self.stream,
      flush=True,
    )


def _stat(values: list[float], scale: float, digits: int) -> str:
  mean = statistics.fmean(values) * scale
  std = statistics.pstdev(values) * scale
  return f"{mean:.{digits}f} +- {std:.{digits}f}"


def best_accuracy_table(rows: list[dict]) -> str:
  """FedSQ's table of summary rows (one per algorithm, data split and seed): best accuracy
  (BVA), the round it was reached and the final accuracy, mean +- std over seeds; a
  point with a diverged seed shows `diverged@r` instead of numbers."""
  groups = {}
  for r in rows:
    split = r.get("data.partition", "") + (
      f" {r['data.dirichlet_alpha']}" if r.get("data.partition") == "dirichlet" else ""
    )
    groups.setdefault((split, r["algorithm"]), []).append(r)
  width = max(len(a) for _, a in groups) + 2
  lines = [f"{'split':<16}{'method':<{width}}{'BVA':>16}{'rounds to BVA':>18}{'final acc':>16}"]
  for (split, name), rs in groups.items():
    diverged = [r for r in rs if r.get("diverged_round", "") not in ("", None)]
    if diverged:  # a frozen model's numbers are not a result
      rounds = ",".join(str(r["diverged_round"]) for r in diverged)
      lines.append(f"{split:<16}{name:<{width}}{f'diverged@{rounds}':>16}")
      continue
    bva = [float(r["best_accuracy"]) for r in rs]
    to_best = [float(r["rounds_to_best"]) for r in rs]
    final = [float(r["final_accuracy"]) for r in rs]
    lines.append(f"{split:<16}{name:<{width}}{_stat(bva, 100, 2):>16}"
                 f"{_stat(to_best, 1, 1):>18}{_stat(final, 100, 2):>16}")  # fmt: skip
  return "\n".join(lines)

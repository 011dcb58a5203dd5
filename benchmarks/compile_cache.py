"""What the persistent compilation cache saves: a run's wall time, cold and warm.

  python benchmarks/compile_cache.py                  # the default job, ~1.5 minutes on 2 cores
  python benchmarks/compile_cache.py --json=cache.json
  python benchmarks/compile_cache.py --config=experiments/configs/fedqs_digits.py \\
      -- --config.schedule.num_rounds=100              # another config; after `--`: its flags
  python benchmarks/compile_cache.py --module=experiments.pretrain  # another CLI

Runs `python -m experiments.main --workdir=<new temporary folder>` (the default job) in
subprocesses, all with one fresh, empty temporary cache folder given through
`$FEDQS_JAX_COMPILATION_CACHE`:

  off     no cache (`$FEDQS_JAX_COMPILATION_CACHE=off`): compile everything, write nothing;
  cold    the empty cache: compile everything and write it (a first run);
  warm    the same command into a new workdir: every program loaded from the cache;
  resume  the warm command again with `--resume` in its workdir (a run continued).

Each row is the subprocess's wall time (start of Python to exit: imports, data, compiles or
cache loads, training, outputs), its ratio to the cold run, and the cache's size and
entries after it. A cold run that leaves the cache empty means the CLI did not enable it:
an error. The machine is shared: the load average is printed with the figures.

Observed (the default job, jax 0.10.2, 2 CPU cores shared with other jobs; the CLI wired to
`compilation_cache.enable_from_flags`): at load average 5.5 -> 17, off 105.7 s, cold
132.5 s, warm 27.5 s (0.21 x cold), resume 34.6 s (0.26 x); 38 entries, 1.3 MB. Alone at
load 0.05 (two runs by hand): cold 35.6 s, warm 9.1 s (0.26 x), every one of the 38
programs loaded (no compile). What is left warm is Python and JAX imports, data, loading the
38 programs, training and evaluation.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from common import loadavg, table, version

from fedqs_jax import io
from fedqs_jax.compilation_cache import ENV

RUNS = ("off", "cold", "warm", "resume")


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--module", default="experiments.main", help="the CLI run with `python -m`")
  p.add_argument("--config", default="", help="its --config (default: the CLI's default)")
  p.add_argument(
    "--runs", default=",".join(RUNS), help=f"which of {', '.join(RUNS)} (cold always runs)"
  )
  p.add_argument("--json", default="", help="also write the results to this JSON file")
  p.add_argument("--keep", action="store_true", help="keep the temporary workdirs and cache")
  p.add_argument("extra", nargs="*", help="after `--`: more flags for the CLI")
  args = p.parse_args(argv)
  runs = set(filter(None, args.runs.split(",")))
  unknown = runs - set(RUNS)
  if unknown:
    p.error(f"--runs={args.runs!r} is invalid: {', '.join(sorted(unknown))} not in {RUNS}")
  args.runs = [r for r in RUNS if r in runs | {"cold"}]
  return args


def cache_size(folder: str) -> tuple[float, int]:
  """(MB, entries) of a JAX cache folder (its `*-cache` files)."""
  files = [f for f in os.listdir(folder) if f.endswith("-cache")]
  return sum(os.path.getsize(os.path.join(folder, f)) for f in files) / 1e6, len(files)


def run_cli(command: list[str], cache: str) -> float:
  """Wall seconds of `command` with `cache` as the compilation cache; its output is shown
  only if it fails."""
  env = {**os.environ, ENV: cache}
  t0 = time.perf_counter()
  proc = subprocess.run(command, env=env, capture_output=True, text=True)
  seconds = time.perf_counter() - t0
  if proc.returncode != 0:
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
    raise SystemExit(f"error: {' '.join(command)} exited {proc.returncode}")
  return seconds


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  root = tempfile.mkdtemp(prefix="fedqs_compile_cache_")
  cache = os.path.join(root, "xla")
  os.makedirs(cache)
  base = [sys.executable, "-m", args.module]
  if args.config:
    base.append(f"--config={args.config}")
  base += args.extra
  load_start = loadavg()
  results = []
  try:
    for name in args.runs:
      workdir = os.path.join(root, "warm" if name == "resume" else name)
      command = [*base, f"--workdir={workdir}"] + (["--resume"] if name == "resume" else [])
      seconds = run_cli(command, "off" if name == "off" else cache)
      mb, entries = cache_size(cache)
      results.append({"run": name, "seconds": seconds, "cache_mb": mb, "entries": entries})
      print(f"  {name:<6} {seconds:6.1f} s  {entries} entries", flush=True)
      if name == "cold" and entries == 0:
        raise SystemExit(
          f"error: the cold run wrote no cache entries: does {args.module} enable the cache "
          "(fedqs_jax.compilation_cache.enable_from_flags)?"
        )
  finally:
    if not args.keep:
      shutil.rmtree(root, ignore_errors=True)
  cold = next(r["seconds"] for r in results if r["run"] == "cold")
  for r in results:
    r["vs_cold"] = r["seconds"] / cold
  rows = [
    [r["run"], f"{r['seconds']:.1f}", f"{r['vs_cold']:.2f}", f"{r['cache_mb']:.1f}", r["entries"]]
    for r in results
  ]
  env = {
    "command": " ".join([*base, "--workdir=<new>"]),
    "jax": version("jax"),
    "jaxlib": version("jaxlib"),
    "cpu_count": os.cpu_count(),
    "loadavg_start": load_start,
    "loadavg_end": loadavg(),
  }
  print(f"== compilation cache: {env['command']} ==")
  print(table(["run", "seconds", "vs cold", "cache MB", "entries"], rows))
  print(
    f"   jax {env['jax']} (jaxlib {env['jaxlib']}), {env['cpu_count']} CPUs, load average "
    f"{env['loadavg_start']} -> {env['loadavg_end']}" + (f"; kept in {root}" if args.keep else "")
  )
  if args.json:
    io.write_json(args.json, {"env": env, "results": results})
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

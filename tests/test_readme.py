"""CI runs exactly the README's test command."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ci_runs_the_readme_test_command():
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    command = [line for line in f if line.startswith("python3 -m venv")][0].strip()
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  assert command in readme.split("## What it is")[0]
  assert "pytest" in command

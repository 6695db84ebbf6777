"""Benchmarks of jaxdistill: each module is a command (``python -m benchmarks.<name>``)."""
import os


def print_and_write(text: str, out) -> None:
  """Prints a benchmark's report and, with ``out`` (a path), writes it there (folders created)."""
  print(text)
  if out:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
      f.write(text)

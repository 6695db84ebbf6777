"""Argument checks shared by the modules where inputs enter, with messages that name the argument."""
from __future__ import annotations

import numpy as np


def check_positive_int(name: str, value) -> None:
  """Raises ``ValueError`` unless ``value`` is an integer >= 1 (bools refused)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be an integer >= 1; got {value!r}.")

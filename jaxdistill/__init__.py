"""jaxdistill: dataset distillation in JAX."""
from jaxdistill.types import Dataset, EvalResult, SyntheticSet

__version__ = "0.1.0"

"""jaxdistill: dataset distillation in JAX."""
from jaxdistill import augment
from jaxdistill import data
from jaxdistill import models
from jaxdistill import training
from jaxdistill import evaluate
from jaxdistill import selection
from jaxdistill import objectives
from jaxdistill import partial_updates
from jaxdistill import parallel
from jaxdistill import checkpoint
from jaxdistill import distill
from jaxdistill import experts
from jaxdistill import logs
from jaxdistill import metrics
from jaxdistill import kernels
from jaxdistill import parameterization
from jaxdistill import diffusion
from jaxdistill import host
from jaxdistill import io
from jaxdistill.types import Dataset, EvalResult, SyntheticSet

__version__ = "0.1.0"

"""IDC (Kim et al., ICML 2022): ``c.idc_factor``**2 real images packed per stored image (multi-formation),
decoded by upsampling, distilled by gradient matching (with DSA when ``c.idc_dsa``)."""
import jax.numpy as jnp

import jaxdistill as jd
from experiments import registry as r

DISTILL_FIELDS = ("idc_factor", "idc_dsa")


def build(c, data):
  f, k = c.idc_factor, data.num_classes
  real = jd.selection.random(r.keys(c)[0], data.x_train, data.y_train, k, c.ipc * f * f)
  init = jd.SyntheticSet(jd.parameterization.idc_init(real.images, f),
                         jnp.repeat(jnp.arange(k, dtype=jnp.int32), c.ipc))
  return r.Method(r.gradient_matching(c, data, use_dsa=c.get("idc_dsa", False)), r.optimizer(c),
                  r.class_sampler(c, data), init, decode=jd.parameterization.idc_decode(f),
                  evaluators=r.evaluators(c, data))


def smoke(c) -> dict:
  return {"idc_factor": 2}

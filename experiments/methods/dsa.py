"""DSA (Zhao & Bilen, ICML 2021): DC's gradient matching with differentiable siamese augmentation of
the real and synthetic batches (and DSA while the inner network trains on the synthetic set)."""
from experiments import registry as r


def build(c, data):  # c.init: DSA's README command starts from real images (--init real)
  return r.Method(r.gradient_matching(c, data, use_dsa=True), r.optimizer(c),
                  r.class_sampler(c, data), r.initial_set(c, data, "real"),
                  evaluators=r.evaluators(c, data))

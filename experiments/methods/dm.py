"""DM (distribution matching, Zhao & Bilen, WACV 2023): per class, the mean embedding of real and
synthetic images under randomly initialized networks is matched (with siamese DSA)."""
import jaxdistill as jd
from experiments import registry as r


def build(c, data):
  model = r.model_of(c, data)
  obj = jd.objectives.distribution_matching(model, data.num_classes, augment=r.dsa(c, data, True))
  return r.Method(obj, r.optimizer(c), r.class_sampler(c, data), r.initial_set(c, data, "real"),
                  evaluators=r.evaluators(c, data))

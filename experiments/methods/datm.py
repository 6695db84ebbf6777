"""DATM (Guo et al., ICLR 2024): MTT with a start-epoch range that grows during the run
(``c.mtt.initial_max_start_epoch``, ``c.mtt.expansion_steps``), initialized with real images the first
expert classifies correctly, and learnable soft labels from the experts at epoch ``c.datm.label_epoch``."""
import jax.numpy as jnp
import numpy as np

import jaxdistill as jd
from experiments import registry as r

DISTILL_FIELDS = ("mtt", "datm")


def correct_init(c, data, model, params) -> jd.SyntheticSet:
  """DATM's initialization: random real images among those ``model`` with ``params`` classifies
  correctly (all images when some class has fewer than ``c.ipc`` of them)."""
  pred = np.asarray(jd.evaluate.predict(model, {"params": params}, jnp.asarray(data.x_train)))
  right = pred == data.y_train
  if np.bincount(data.y_train[right], minlength=data.num_classes).min() < c.ipc:
    right = np.ones_like(right)
  return jd.selection.random(r.keys(c)[0], data.x_train[right], data.y_train[right],
                             data.num_classes, c.ipc)


def build(c, data):
  model = r.model_of(c, data)
  traj = r.experts(c, data, model)
  obj, sampler = r.trajectory_parts(c, data, model, traj)
  apply = lambda p, x: model.apply({"params": p}, x, train=False)
  nets = [traj.params_at(i, c.datm.label_epoch) for i in range(traj.num_experts)]
  init = correct_init(c, data, model, nets[0])
  labels = jd.objectives.soft_labels_from_experts(apply, nets, init.images, init.labels)
  init = r.with_step_size(c, init._replace(labels=labels))
  return r.Method(obj, r.optimizer(c, labels=True, log_lr=True), sampler, init,
                  evaluators=r.evaluators(c, data, own=r.trajectory_evaluators(c, data, model, traj)),
                  loss_threshold=c.datm.get("threshold"))


def smoke(c) -> dict:
  return {**r.trajectory_smoke(c), "datm.label_epoch": 2}

"""DATM (Guo et al., ICLR 2024): MTT with a start-epoch range that grows during the run
(``c.mtt.initial_max_start_epoch``, ``c.mtt.expansion_steps``), initialized with real images the first
expert classifies correctly (``c.datm.pix_init``; "real": random real images with the first expert's
logits, DATM's CIFAR-100 IPC 50 setting), and learnable soft labels from the experts at epoch
``c.datm.label_epoch``."""
import jax.numpy as jnp
import numpy as np

import jaxdistill as jd
from experiments import registry as r

DISTILL_FIELDS = ("mtt", "datm")
# DATM's pix_init: "samples_predicted_correctly" (its configs but one) or "real" (CIFAR-100 IPC 50).
PIX_INITS = ("samples_predicted_correctly", "real")


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
  pix_init = c.datm.get("pix_init", "samples_predicted_correctly")
  if pix_init not in PIX_INITS:
    raise ValueError(f"Unknown datm.pix_init {pix_init!r}; known: {PIX_INITS}.")
  if pix_init == "real":  # DATM.py: random real images, the first expert's logits as they are
    init = r.random_init(c, data)
    labels = jd.objectives.soft_labels_from_experts(apply, nets[0], init.images)
  else:
    init = correct_init(c, data, model, nets[0])
    labels = jd.objectives.soft_labels_from_experts(apply, nets, init.images, init.labels)
  init = r.with_step_size(c, init._replace(labels=labels))
  return r.Method(obj, r.optimizer(c, labels=True, log_lr=True), sampler, init,
                  evaluators=r.evaluators(c, data, own=r.trajectory_evaluators(c, data, model, traj)),
                  loss_threshold=c.datm.get("threshold"))


def smoke(c) -> dict:
  return {**r.trajectory_smoke(c), "datm.label_epoch": 2}
